"""A callback that folds BatchNormalization and exports the model."""

import os
import warnings

import keras

from keras_norms import export as _export
from keras_norms import inference as _inference
from keras_norms import precise as _precise
from keras_norms import _validation

__all__ = ["FoldAndExport"]


class FoldAndExport(keras.callbacks.Callback):
    """Optimize for inference and export an XLA SavedModel during `fit`.

    At the end of training, the model is put in its inference form
    (`keras_norms.inference.optimize_for_inference`: every
    BatchNormalization goes into the Conv/Dense layer before it, or becomes
    a fixed `Affine`; WeightNormalization / WeightStandardization become
    plain layers; a leading `keras.layers.Normalization` goes into the
    first layer) and written as a TensorFlow SavedModel whose
    `serving_default` signature is XLA-compiled
    (`keras_norms.export.export_saved_model`). The live model keeps
    training untouched: the inference form is a new model.

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
    `ValueError` instead and keeps the previous export.

    Args:
        filepath: Directory of the SavedModel (may contain `{epoch}` and
            metric names from the logs, formatted as in ModelCheckpoint).
        monitor: Metric name to watch (`"val_loss"`), or `None` to export
            once at the end of training.
        mode: `"auto"`, `"min"` or `"max"`: whether a lower or higher
            `monitor` is better (`"auto"`: max for accuracies and AUC-like
            names, else min).
        sample: Input batch for the check (array, or list of arrays).
        atol: Absolute part of the check's tolerance.
        rtol: Part of the check's tolerance relative to the largest
            absolute output of the model.
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
        jit_compile: XLA-compile the serving function.
        verbose: `"auto"` or `1` prints one line per export (its path and
            the check's figure), `0` is silent.

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
    """

    def __init__(
        self,
        filepath,
        *,
        monitor=None,
        mode="auto",
        sample=None,
        atol=_inference.ATOL,
        rtol=_inference.RTOL,
        on_mismatch="warn",
        precise_statistics=None,
        fold=True,
        jit_compile=True,
        verbose="auto",
    ):
        super().__init__()
        self.precise_statistics = _check_precise_statistics(precise_statistics)
        self.filepath = os.fspath(filepath)
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(
                "Argument `monitor` must be a metric name or None. "
                f"Received: monitor={monitor!r}"
            )
        self.monitor = monitor
        if mode not in ("auto", "min", "max"):
            raise ValueError(
                "Argument `mode` must be 'auto', 'min' or 'max'. "
                f"Received: mode={mode!r}"
            )
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
        self.atol, self.rtol, self.on_mismatch = _inference.check_tolerance(
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
            _export.check_target(self.filepath, overwrite=True)

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
            _precise.recompute_batch_norm_statistics(
                self.model, x, steps=steps, verbose=int(self.verbose)
            )
        return self.model

    def _format_path(self, epoch, logs):
        if epoch is None:
            return self.filepath.replace("{epoch}", "end")
        return self.filepath.format(epoch=epoch, **(logs or {}))

    def _fold_export_and_check(self, epoch, logs):
        path = self._format_path(epoch, logs)
        try:
            model = self._model_to_export()
            result = _export.export(
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
            )
        except _inference.OutputMismatchError:
            raise  # on_mismatch="raise": asked for
        except Exception as e:  # keep training, and the last good export
            reason = f"{type(e).__name__}: {e}"
            self.failed.append((path, reason))
            kept = (
                f"the previous export at {path!r} is unchanged"
                if os.path.isdir(path)
                else "nothing was written there"
            )
            warnings.warn(
                f"FoldAndExport: exporting to {path!r} failed; training "
                f"goes on and {kept}. The reason: {reason}",
                stacklevel=2,
            )
            return
        self.exported.append(path)
        if self.verbose:
            print(result.summary())


def _check_precise_statistics(value):
    """`None`, or `(x, steps)` with `steps` a positive int or None."""
    if value is None:
        return None
    if isinstance(value, tuple) and len(value) == 2:
        x, steps = value
    else:
        x, steps = value, None
    if steps is not None and (
        isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0
    ):
        raise ValueError(
            "Argument `precise_statistics` must be `x` or `(x, steps)` with "
            "steps a positive int or None. "
            f"Received: precise_statistics=(..., {steps!r})"
        )
    return x, steps
