"""Callbacks for `fit`: precise statistics, folding and export.

- `PreciseBatchNorm` recomputes the BatchNormalization statistics with
  `keras_norms.precise.recompute_batch_norm_statistics` before each
  epoch's validation;
- `FoldAndExport` puts the model in its inference form
  (`keras_norms.inference.optimize_for_inference`) and exports it with
  `keras_norms.saved_model.export_saved_model` (or, with `format=`, with
  `keras_norms.deploy.export` to ONNX, LiteRT, OpenVINO or torch), at the
  end or at each improvement.

Both reach the tools through their public functions only.
"""

import os
import traceback
import types
import warnings

import keras

from keras_norms import _check
from keras_norms import _validation
from keras_norms import deploy
from keras_norms import precise
from keras_norms import saved_model
from keras_norms._check import OutputMismatchError

__all__ = ["FoldAndExport", "PreciseBatchNorm"]


class PreciseBatchNorm(keras.callbacks.Callback):
    """Recompute precise BatchNormalization statistics during `fit`.

    Every `every_n_epochs` epochs, once the epoch's training steps are done
    and BEFORE its validation runs, the moving statistics of every
    BatchNormalization-like layer are replaced by precise ones on `x`
    (`recompute_batch_norm_statistics`), so the epoch's `val_*` metrics,
    and any later callback (`ModelCheckpoint`, `EarlyStopping`), see the
    model with precise statistics. At the end of training they are
    recomputed once more if training steps ran since the last time.

    How: Keras' `fit` runs validation (`evaluate` with fit's callbacks)
    before `on_epoch_end`, on every backend, so the callback recomputes in
    `on_test_begin` when that comes from fit's validation, and in
    `on_epoch_end` for epochs without validation. Training then goes on
    from the precise statistics (the moving averages continue from them).

    Args:
        x: Data to compute the statistics on, as `model.predict` takes it;
            it is iterated once per recomputation, so it must be
            re-iterable (array, `tf.data.Dataset`, `PyDataset`, torch
            `DataLoader`; not a generator). Usually a part of the training
            data, in training-size batches.
        batch_size: Batch size for array inputs (default 32).
        steps: Largest number of batches per recomputation (200, as in
            Wu & Johnson; `None`: all of `x`).
        every_n_epochs: Recompute every this many epochs (the last epoch of
            a period, counted from epoch 1).
        include_frozen: Also recompute frozen layers (see
            `recompute_batch_norm_statistics`).
        verbose: Progress bar of each recomputation (`0`: none).

    Reference:
        - [Wu & Johnson, 2021](https://arxiv.org/abs/2105.07576).

    Examples:
        >>> bn = kn.BatchNormalization()
        >>> model = keras.Sequential([keras.Input((2,)), bn])
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> x = np.array([[0.0, 10.0], [4.0, 30.0]] * 4, dtype="float32")
        >>> callback = kn.PreciseBatchNorm(x)
        >>> _ = model.fit(x, x, epochs=1, callbacks=[callback], verbose=0)
        >>> print(np.round(keras.ops.convert_to_numpy(bn.moving_mean), 3))
        [ 2. 20.]
    """

    def __init__(
        self,
        x,
        *,
        batch_size=None,
        steps=200,
        every_n_epochs=1,
        include_frozen=False,
        verbose=0,
    ):
        super().__init__()
        if isinstance(x, types.GeneratorType):
            raise TypeError(
                "PreciseBatchNorm iterates `x` at every recomputation, so it "
                "must be re-iterable (an array, tf.data.Dataset, PyDataset or "
                "torch DataLoader), not a generator. Received: "
                f"x={_validation.describe(x)}"
            )
        self.x = x
        self.batch_size = _validation.check_positive_int(
            "batch_size", batch_size, allow_none=True
        )
        self.steps = _validation.check_positive_int(
            "steps", steps, allow_none=True
        )
        self.every_n_epochs = _validation.check_positive_int(
            "every_n_epochs", every_n_epochs
        )
        self.include_frozen = _validation.check_bool(
            "include_frozen", include_frozen
        )
        self.verbose = _validation.check_verbose(verbose)
        self.history = []  # (epoch or "end", result) of each recomputation
        self._pending = False
        self._fresh = True
        self._epoch = None

    def _recompute(self, when):
        with warnings.catch_warnings():
            if when != "end":
                warnings.simplefilter("ignore", UserWarning)
            result = precise.recompute_batch_norm_statistics(
                self.model,
                self.x,
                batch_size=self.batch_size,
                steps=self.steps,
                verbose=self.verbose,
                include_frozen=self.include_frozen,
            )
        self.history.append((when, result))
        self._pending = False
        self._fresh = True

    def on_train_begin(self, logs=None):
        self._pending = False
        self._fresh = True

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._pending = (epoch + 1) % self.every_n_epochs == 0
        self._fresh = False

    def on_test_begin(self, logs=None):
        # Called by fit's validation (after the epoch's training steps);
        # `_pending` is False for an `evaluate` outside `fit`.
        if self._pending:
            self._recompute(self._epoch)

    def on_epoch_end(self, epoch, logs=None):
        if self._pending:  # no validation this epoch
            self._recompute(epoch)

    def on_train_end(self, logs=None):
        if not self._fresh:
            self._recompute("end")


class FoldAndExport(keras.callbacks.Callback):
    """Optimize for inference and export the model during `fit`.

    At the end of training, the model is put in its inference form
    (`keras_norms.inference.optimize_for_inference`: every
    BatchNormalization goes into the Conv/Dense layer before it, or becomes
    a fixed `Affine`; WeightNormalization / WeightStandardization become
    plain layers; a leading `keras.layers.Normalization` goes into the
    first layer) and written as a TensorFlow SavedModel whose
    `serving_default` signature is XLA-compiled
    (`keras_norms.saved_model.export_saved_model`). The live model keeps
    training untouched: the inference form is a new model.

    With `format` set to `"onnx"`, `"litert"`, `"openvino"` or `"torch"`,
    the export goes through `keras_norms.deploy.export` instead: Keras'
    own exporter for that format, checked in a fresh process by the
    format's runtime alone (the same rule, `max |artifact - model| <=
    atol + rtol * max |model|`), written only once it passes. A format this backend
    cannot write, or whose runtime is not installed, is refused when the
    callback is created, not after training.

    With `monitor`, it exports instead whenever the monitored metric
    improves (as `keras.callbacks.ModelCheckpoint(save_best_only=True)`),
    overwriting `filepath` with the best model so far (use `{epoch}` or a
    metric name such as `{val_loss:.3f}` in `filepath` to keep every one);
    at the end of training it exports only if the metric never appeared.

    Each export is written beside `filepath` and moved into place only
    when complete (`export_saved_model`): `filepath` is only ever replaced
    by a newer export, never deleted, and a directory holding anything
    other than an earlier export is refused before training starts. An
    export that fails (a tracing error, a full or read-only disk, a custom
    layer the torch child process cannot import) warns with the reason
    and training goes on; the last good export stays where it was
    (`failed` lists the failures).

    Each export is checked: the SavedModel, run with TensorFlow, against
    `model(sample, training=False)` of the live model, output by output,

        max |exported - model| <= atol + rtol * max |model|

    (float32 reassociation passes on outputs of any scale, a wrong export
    does not). The sample is the given `sample`, or a deterministic batch
    of 4 built from the model's input shapes (see
    `keras_norms.inference.optimize_for_inference`; Keras callbacks do not
    see the training data). A failed check does not throw a finished
    training away: by default it warns with the figures and keeps the
    export (and says where it is); `on_mismatch="raise"` raises a
    `ValueError` instead and keeps the previous export. (With another
    `format`, an artifact that fails its check is never written: "warn"
    warns and keeps the previous one, "raise" raises.)

    Args:
        filepath: Directory of the SavedModel, or the file for another
            `format` (ending `.onnx`, `.tflite`, `.xml`, `.pt2`); may
            contain `{epoch}` and metric names from the logs, formatted as
            in ModelCheckpoint.
        monitor: Metric name to watch (`"val_loss"`), or `None` to export
            once at the end of training.
        mode: `"auto"`, `"min"` or `"max"`: whether a lower or higher
            `monitor` is better (`"auto"`: max for accuracies and AUC-like
            names, else min).
        sample: Input batch for the check (an array, or the list, dict
            or nested structure of arrays the model takes).
        atol: Absolute part of the check's tolerance, for every format;
            `None` follows the model's compute dtype (`1e-5` for float32,
            see `keras_norms.inference.optimize_for_inference`). Not with
            `quantize` (its own rule).
        rtol: Part of the check's tolerance relative to the largest
            absolute output of the model, for every format; `None`
            follows the model's compute dtype (`1e-4` for float32).
        on_mismatch: `"warn"` (keep the export, warn with the figures) or
            `"raise"` (raise a `ValueError`, keep the previous export).
        precise_statistics: Optional `(x, steps)` (or just `x`): before
            each export, recompute the live model's BatchNormalization
            statistics on `steps` batches of `x` with the weights frozen
            (`keras_norms.recompute_batch_norm_statistics`, PreciseBN), so
            the exported model does not bake in stale moving averages. `x`
            is anything `model.predict` takes; `steps=None` reads all of
            it. The live model keeps the recomputed statistics.
        fold: Apply `optimize_for_inference` before exporting.
        jit_compile: XLA-compile the serving function (SavedModel only).
        verbose: `"auto"` or `1` prints one line per export (its path and
            the check's figure), `0` is silent.
        format: `"tf_saved_model"` (the default: `export_saved_model`),
            or `"onnx"`, `"litert"`, `"openvino"`, `"torch"` (through
            `keras_norms.deploy.export`).
        **export_kwargs: Passed to `keras_norms.deploy.export` for the
            other formats, e.g. `batch_size=1` for a static batch, or
            `opset_version` for ONNX.

    Examples:
        Keep the best model of a training exported (`x`, `y`, `x_val` and
        `y_val` are your data):

        ```python
        model.fit(
            x, y, epochs=10, validation_data=(x_val, y_val),
            callbacks=[keras_norms.FoldAndExport("exported/best",
                                                 monitor="val_loss")],
        )
        ```

        `mode="auto"` reads the direction from the metric's name:

        >>> kn.FoldAndExport("exported/best", monitor="val_loss").mode
        'min'
        >>> kn.FoldAndExport("exported/best", monitor="val_accuracy").mode
        'max'

        Another format is checked before training starts:

        >>> kn.FoldAndExport("best.onnx", format="onnx").format
        'onnx'
        >>> kn.FoldAndExport("best.onnx", format="tflite")
        Traceback (most recent call last):
        ...
        ValueError: Argument `format` must be one of [...]. Received: format='tflite'
    """

    def __init__(
        self,
        filepath,
        *,
        monitor=None,
        mode="auto",
        sample=None,
        atol=None,
        rtol=None,
        on_mismatch="warn",
        precise_statistics=None,
        fold=True,
        jit_compile=True,
        verbose="auto",
        format="tf_saved_model",
        **export_kwargs,
    ):
        super().__init__()
        deploy.check_format(format)
        self.format = format
        self.export_kwargs = _check_export_kwargs(
            format, export_kwargs, jit_compile
        )
        self.precise_statistics = _check_precise_statistics(precise_statistics)
        self.filepath = os.fspath(filepath)
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(
                "Argument `monitor` must be a metric name or None. "
                f"Received: monitor={monitor!r}"
            )
        self.monitor = monitor
        _validation.check_one_of("mode", mode, ("auto", "min", "max"))
        if mode == "auto":
            better_high = monitor is not None and (
                "acc" in monitor
                or monitor.endswith("auc")
                or "precision" in monitor
                or "recall" in monitor
            )
            mode = "max" if better_high else "min"
        self.mode = mode
        self.sample = sample
        self.atol, self.rtol, self.on_mismatch = _check.check_tolerance(
            atol, rtol, on_mismatch
        )
        self.fold = bool(fold)
        self.jit_compile = bool(jit_compile)
        self.verbose = _validation.check_verbose(verbose)
        self.best = None
        self.exported = []  # the paths written, in order
        self.failed = []  # (path, reason) of each export that failed

    # ------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self.best = None
        self.exported = []
        self.failed = []
        if "{" not in self.filepath:
            # Refuse an unsafe target now, not after the training.
            deploy.check_filepath(self.filepath, self.format, overwrite=True)

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor is None:
            return
        current = (logs or {}).get(self.monitor)
        if current is None:
            return
        current = float(current)
        if self.best is None or (
            current < self.best if self.mode == "min" else current > self.best
        ):
            if self.verbose:
                print(
                    f"\nEpoch {epoch + 1}: {self.monitor} improved from "
                    f"{self.best} to {current}; folding and exporting."
                )
            self.best = current
            self._fold_export_and_check(epoch + 1, logs)

    def on_train_end(self, logs=None):
        if self.monitor is None or not self.exported:
            self._fold_export_and_check(None, logs)

    # ------------------------------------------------------------------
    def _model_to_export(self):
        """The live model, with precise statistics first if asked for."""
        if self.precise_statistics is not None:
            x, steps = self.precise_statistics
            precise.recompute_batch_norm_statistics(
                self.model, x, steps=steps, verbose=int(self.verbose)
            )
        return self.model

    def _format_path(self, epoch, logs):
        if epoch is None:
            return self.filepath.replace("{epoch}", "end")
        return self.filepath.format(epoch=epoch, **(logs or {}))

    def _export(self, model, path):
        """Write and check one export; its report (has `summary()`/str)."""
        if self.format != "tf_saved_model":
            tolerance = {
                name: value
                for name, value in (("atol", self.atol), ("rtol", self.rtol))
                if value is not None
            }
            return deploy.export(
                model,
                path,
                format=self.format,
                fold=self.fold,
                sample=self.sample,
                overwrite=True,
                **tolerance,
                **self.export_kwargs,
            )
        return saved_model.export(
            model,
            path,
            fold=self.fold,
            jit_compile=self.jit_compile,
            overwrite=True,
            sample=self.sample,
            atol=self.atol,
            rtol=self.rtol,
            on_mismatch=self.on_mismatch,
            verbose=0,
        ).summary()

    def _fold_export_and_check(self, epoch, logs):
        path = self._format_path(epoch, logs)
        try:
            result = self._export(self._model_to_export(), path)
        except OutputMismatchError as e:
            if self.on_mismatch == "raise":
                raise
            # Another format: nothing was written; the last export stays.
            self.failed.append((path, str(e)))
            warnings.warn(f"FoldAndExport: {e}", stacklevel=2)
            return
        except (OSError, RuntimeError, ValueError) as e:
            # A failed export (the exporter, its runtime, the disk, a
            # model the format cannot take): training goes on, the last
            # good export stays. Any other error is a bug: it propagates.
            reason = "".join(traceback.format_exception(e)).rstrip()
            self.failed.append((path, reason))
            kept = (
                f"the previous export at {path!r} is unchanged"
                if os.path.exists(path)
                else "nothing was written there"
            )
            warnings.warn(
                f"FoldAndExport: exporting to {path!r} failed; training "
                f"goes on and {kept}. The reason, with its traceback:\n"
                f"{reason}",
                stacklevel=2,
            )
            return
        self.exported.append(path)
        if self.verbose:
            print(result)


# What FoldAndExport decides itself, so not an export keyword.
_OWN_ARGUMENTS = ("model", "filepath", "format", "fold", "sample", "overwrite")


def _check_export_kwargs(format, export_kwargs, jit_compile):
    """`export_kwargs` for `deploy.export`, or an error before training."""
    if format == "tf_saved_model":
        if export_kwargs:
            raise TypeError(
                "FoldAndExport takes export keyword arguments only with a "
                "format other than 'tf_saved_model' (they go to "
                "keras_norms.deploy.export). Received: "
                f"{', '.join(f'{k}={v!r}' for k, v in export_kwargs.items())}"
            )
        return {}
    own = sorted(set(export_kwargs) & set(_OWN_ARGUMENTS))
    if own:
        raise TypeError(
            f"FoldAndExport sets `{own[0]}` itself; it is not an export "
            f"keyword argument. Received: {own[0]}={export_kwargs[own[0]]!r}"
        )
    if jit_compile is not True:
        raise ValueError(
            "Argument `jit_compile` applies to format='tf_saved_model' only "
            "(the other formats are compiled by their runtime). "
            f"Received: jit_compile={jit_compile!r}"
        )
    return export_kwargs


def _check_precise_statistics(value):
    """`None`, or `(x, steps)` with `steps` a positive int or None."""
    if value is None:
        return None
    if isinstance(value, tuple) and len(value) == 2:
        x, steps = value
    else:
        x, steps = value, None
    if steps is not None and not (_validation.is_integer(steps) and steps > 0):
        error = ValueError if _validation.is_integer(steps) else TypeError
        raise error(
            "Argument `precise_statistics` must be `x` or `(x, steps)` with "
            "steps a positive int or None. "
            f"Received: precise_statistics=(..., {steps!r})"
        )
    return x, None if steps is None else int(steps)
