"""`DeployReport`: what `keras_norms.deploy.export` wrote, and how close it is.

Its figures come from the export's check (`keras_norms._check.Check`).
"""


def sizes_text(sizes):
    """`"1, 4 and 5"`: the distinct batch sizes, in increasing order."""
    names = [str(size) for size in sorted(set(sizes))]
    if len(names) > 1:
        names = [", ".join(names[:-1]), names[-1]]
    return " and ".join(names)


class DeployReport:
    """What `export` wrote and how close the artifact is to the model.

    Attributes:
        format: The export format.
        path: The absolute path of the artifact.
        runtime: The runtime the check loaded it with, and its version.
        max_abs_difference: `max |artifact - model|` over the outputs on
            the sample batch (`None` when `verify=False`).
        tolerance: The bound of that output: `atol + rtol * max |model
            output|`, or the quantized rule's (`None` when
            `verify=False`).
        static_batch: The batch size the artifact is fixed to
            (`batch_size=N`), or `None` if it takes any batch.
        checked_batch_sizes: The batch sizes the check ran the artifact
            on, each as one call (e.g. `[1, 4, 5]`: the 4-row sample, and
            batches of 1 and 5 rows built from its rows, for a dynamic
            batch; `[N]` for `batch_size=N`), else `None`.
        folded: Whether the model was put in its inference form first.
        rule: How `tolerance` was computed from the model's outputs.
        quantize: `None`, or the quantization (`"int8"`, `"float16"`).
        mean_abs_difference: For `quantize="int8"`, `mean |artifact -
            model|` (the output where it is largest against its
            tolerance), else `None`.
        mean_tolerance: Its tolerance (see `rule`), else `None`.
        checked_on: Which rows the check ran on: `"the 16 rows of
            `sample`"`, `"4 rows drawn at random (seeded)"`, or for
            `quantize="int8"` without `sample`, `"64 rows of
            representative_data held out from calibration (calibrated on
            200)"` (`None` when `verify=False`).
        check_rows: How many rows (distinct ones: a static batch size
            repeats rows up to whole batches), else `None`.
        dtype: The compute dtype of the exported model: the model's
            (`"float32"`, or `"float16"` / `"bfloat16"` for a mixed
            precision model), or `"float32"` for a float32 copy.
        atol, rtol: The terms of the float rule: `1e-5` and `1e-4` for a
            float32 model, `16 * eps` for a float16 (`eps = 2**-10`) or
            bfloat16 (`eps = 2**-7`) one (`None` with `quantize="int8"`).
        precision: OpenVINO: the precision the check ran in (`"f32"`,
            forced with `INFERENCE_PRECISION_HINT`), else `None`.
        default_precision: OpenVINO: the precision its CPU plugin picks
            without that hint on this machine (`"bf16"` on processors
            with bfloat16 units, else `"f32"`), else `None`.
        default_precision_difference: OpenVINO: `max |artifact - model|`
            in that default precision (reported; the check's rule
            applies to the f32 run, and `export` warns when this one
            exceeds the tolerance), else `None`.
    """

    def __init__(
        self,
        format,
        path,
        runtime,
        max_abs_difference=None,
        tolerance=None,
        static_batch=None,
        folded=True,
        rule=None,
        quantize=None,
        mean_abs_difference=None,
        mean_tolerance=None,
        checked_on=None,
        check_rows=None,
        dtype="float32",
        atol=None,
        rtol=None,
        checked_batch_sizes=None,
        precision=None,
        default_precision=None,
        default_precision_difference=None,
    ):
        self.format = format
        self.path = path
        self.runtime = runtime
        self.max_abs_difference = max_abs_difference
        self.tolerance = tolerance
        self.static_batch = static_batch
        self.folded = folded
        self.rule = rule
        self.quantize = quantize
        self.mean_abs_difference = mean_abs_difference
        self.mean_tolerance = mean_tolerance
        self.checked_on = checked_on
        self.check_rows = check_rows
        self.dtype = dtype
        self.atol = atol
        self.rtol = rtol
        self.checked_batch_sizes = checked_batch_sizes
        self.precision = precision
        self.default_precision = default_precision
        self.default_precision_difference = default_precision_difference

    @property
    def verified(self):
        return self.max_abs_difference is not None

    def to_dict(self):
        return dict(vars(self))

    def __str__(self):
        what = self.format + (f" ({self.quantize})" if self.quantize else "")
        if not self.verified:
            return f"Exported {what} to {self.path} (not verified)."
        mean = ""
        if self.mean_abs_difference is not None:
            mean = (
                f", mean abs difference {self.mean_abs_difference:.3g} <= "
                f"{self.mean_tolerance:.3g}"
            )
        on = f" on {self.checked_on}" if self.checked_on else ""
        if self.checked_batch_sizes:
            on += f" (batches of {sizes_text(self.checked_batch_sizes)} rows)"
        return (
            f"Exported {what} to {self.path}; {self.runtime} matches "
            f"the model{on}: max abs difference "
            f"{self.max_abs_difference:.3g} <= tolerance "
            f"{self.tolerance:.3g}{mean} ({self.rule}){self._precision()}."
        )

    def _precision(self):
        if self.default_precision_difference is None:
            return ""
        return (
            f"; run in {self.precision} (in the runtime's default precision "
            f"here, {self.default_precision}, max abs difference "
            f"{self.default_precision_difference:.3g})"
        )

    def __repr__(self):
        return f"DeployReport({self.to_dict()!r})"
