"""The check of a written artifact in its runtime, for `kn.export`.

`check_batches` builds the batches the check runs (with a dynamic batch:
the sample, and batches of `DYNAMIC_CHECK_BATCHES` rows built from it),
`verify` runs the staged artifact on them in a fresh process holding its
runtime alone (`keras_norms._runtimes.run_in_child`) and compares with
the model's outputs (`keras_norms._check`), filling the `DeployReport`.
"""

import keras
import numpy as np

from keras_norms import _check
from keras_norms import _deploy_report
from keras_norms import _quantize

# With `batch_size=None` the check runs the artifact on the sample as one
# batch and on batches of these sizes built from its rows (one row, and an
# odd number above one): an artifact that takes one batch size only (a
# program traced with a batch of 1, say) cannot pass as dynamic.
DYNAMIC_CHECK_BATCHES = (1, 5)


def check_batches(model, sample, expected, batch_size):
    """The batches the check runs the artifact on: `(xs, expected, sizes)`.

    With `batch_size`, the sample in chunks of it. Without, the sample as
    one batch, then `DYNAMIC_CHECK_BATCHES` (those of another size than
    the sample's) built from its rows (`np.resize`: the rows in order,
    repeated: `_check.with_rows`), and the model's outputs on each. `xs` and `expected` are
    flat (model order), the batches concatenated row-wise; `sizes` their
    row counts, in order.
    """
    rows = len(keras.tree.flatten(sample)[0])
    if batch_size is not None:
        sizes = [batch_size] * (rows // batch_size)
        return (
            [np.asarray(x) for x in keras.tree.flatten(sample)],
            expected,
            sizes,
        )
    sizes = [rows] + [b for b in DYNAMIC_CHECK_BATCHES if b != rows]
    parts = [(sample, expected)]
    for size in sizes[1:]:
        batch = _check.with_rows(sample, size)
        parts.append((batch, _check.model_outputs(model, batch)))
    xs = [
        np.concatenate(arrays)
        for arrays in zip(
            *[[np.asarray(x) for x in keras.tree.flatten(b)] for b, _ in parts]
        )
    ]
    expected = [
        np.concatenate(outputs) for outputs in zip(*[e for _, e in parts])
    ]
    return xs, expected, sizes


def verify(staged, format, tolerance, report, inputs, reference):
    """Run `staged` on the check batches in a fresh process holding its
    runtime alone; compare with the model's outputs; fill `report`.

    Returns the warnings to give once the artifact is written (a list).
    Raises `OutputMismatchError` (nothing is written) if they differ, a
    `ValueError` if the artifact takes one batch size only and the
    check's batches are of several.
    """
    from keras_norms import _runtimes

    model, sample, expected, (xs, batch_expected, sizes) = reference
    nothing = (
        f"nothing was written to {report.path!r} (an earlier file there "
        "is unchanged)"
    )
    got, meta = _runtimes.run_in_child(
        format,
        staged,
        xs,
        inputs,
        batches=sizes,
        options={"also_default": True} if format == "openvino" else None,
        what=f"The {report.runtime} check of the {format} export ({nothing})",
    )
    report.runtime = f"{report.runtime} {meta['version']}"
    report.static_batch = static = meta["static_batch"]
    if static is not None and any(size != static for size in sizes):
        if len(set(sizes)) == 1:  # batch_size=N, and the exporter wrote M
            asked = f"batch_size={sizes[0]}"
            why = f"the exporter did not write the asked batch {sizes[0]}"
        else:
            asked = "batch_size=None"
            why = (
                "the exporter fixed its batch dimension, though "
                "batch_size=None asks for any batch"
            )
        raise ValueError(
            f"The {format} export, run by {report.runtime}, takes a batch "
            f"of {static} row(s) only, so it cannot run the check's "
            f"batches of {_deploy_report.sizes_text(sizes)} rows: {why} "
            f"({nothing}). Pass batch_size={static} (or the batch you "
            "will run) for an artifact with that static batch, or use "
            f"another format. Received: {asked}"
        )
    report.checked_batch_sizes = sorted(set(sizes))
    what = f"The {format} export, run by {report.runtime},"
    check = _check.Check.run(
        got, batch_expected, tolerance, what=what, checked_on=report.checked_on
    )
    report.max_abs_difference = check.max_difference
    report.tolerance = check.bound
    report.mean_abs_difference = check.mean_difference
    report.mean_tolerance = check.mean_bound
    hint = (
        _quantize.hint(report.quantize)
        if report.quantize
        else "Try another format, or fold=False."
    )
    _check.enforce_against(
        check,
        model,
        sample,
        expected,
        "raise",
        f" {nothing[0].upper()}{nothing[1:]}. {hint}",
    )
    if "variants" not in meta:
        return []
    return _report_default_precision(meta, batch_expected, tolerance, report)


def _report_default_precision(meta, expected, tolerance, report):
    """Fill `report`'s figures of the runtime's default precision (OpenVINO:
    the CPU plugin's, bf16 where the processor has bf16 units); returns
    `[warning]` if that precision exceeds the check's tolerance, else
    `[]`."""
    default = meta["variants"]["default"]
    report.precision = meta.get("precision")
    report.default_precision = default.get("precision")
    check = _check.Check.run(
        default["outputs"],
        expected,
        tolerance,
        what=(
            f"The {report.format} export, run by {report.runtime} in its "
            f"default precision ({report.default_precision}),"
        ),
        checked_on=report.checked_on,
    )
    report.default_precision_difference = check.max_difference
    if check.passed:
        return []
    return [
        f"{check}. The artifact was verified in {report.precision} and "
        f"written; OpenVINO's CPU plugin runs it in "
        f"{report.default_precision} by default on this processor. To "
        "compute what was checked, compile it with "
        "core.compile_model(model, 'CPU', "
        "{'INFERENCE_PRECISION_HINT': 'f32'}) (the export guide, "
        '"OpenVINO\'s precision").'
    ]
