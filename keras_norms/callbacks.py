"""A callback that folds BatchNormalization and exports the model."""

import os

import keras
import numpy as np

from keras_norms import export as _export
from keras_norms import precise as _precise
from keras_norms.layers import _validation

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

    After each export it checks the SavedModel, run with TensorFlow alone,
    against `model(sample, training=False)` of the live model, and raises
    a `ValueError` if they differ by more than `atol`. The sample is the
    given `sample`, or a deterministic standard-normal batch of 4 built
    from the model's input shapes (Keras callbacks do not see the training
    data).

    Args:
        filepath: Directory of the SavedModel (may contain `{epoch}` and
            metric names from the logs, formatted as in ModelCheckpoint).
        monitor: Metric name to watch (`"val_loss"`), or `None` to export
            once at the end of training.
        mode: `"auto"`, `"min"` or `"max"`: whether a lower or higher
            `monitor` is better (`"auto"`: max for accuracies and AUC-like
            names, else min).
        sample: Input batch for the check (array, or list of arrays).
        atol: Largest accepted absolute difference in the check.
        precise_statistics: Optional `(x, steps)` (or just `x`): before
            each export, recompute the live model's BatchNormalization
            statistics on `steps` batches of `x` with the weights frozen
            (`keras_norms.recompute_batch_norm_statistics`, PreciseBN), so
            the exported model does not bake in stale moving averages. `x`
            is anything `model.predict` takes; `steps=None` reads all of
            it. The live model keeps the recomputed statistics.
        fold: Apply `optimize_for_inference` before exporting.
        jit_compile: XLA-compile the serving function.
        verbose: `"auto"` or `1` prints what it does, `0` is silent.
    """

    def __init__(
        self,
        filepath,
        *,
        monitor=None,
        mode="auto",
        sample=None,
        atol=1e-4,
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
        if not (isinstance(atol, (int, float)) and atol >= 0):
            raise ValueError(
                f"Argument `atol` must be a float >= 0. Received: atol={atol!r}"
            )
        self.atol = float(atol)
        self.fold = bool(fold)
        self.jit_compile = bool(jit_compile)
        self.verbose = _validation.check_verbose(verbose)
        self.best = None
        self.exported = []  # the paths written, in order

    # ------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self.best = None
        self.exported = []

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
        model = self._model_to_export()
        path = self._format_path(epoch, logs)
        _export.export_saved_model(
            model,
            path,
            fold=self.fold,
            jit_compile=self.jit_compile,
            overwrite=True,
            verbose=int(self.verbose),
        )
        self.exported.append(path)
        self._check(model, path)

    def _sample_batch(self, model):
        if self.sample is not None:
            return self.sample
        rng = np.random.RandomState(0)
        batch = []
        for x in model.inputs:
            shape = [4] + [d if d is not None else 8 for d in x.shape[1:]]
            if "int" in str(x.dtype):
                batch.append(np.zeros(shape, dtype=x.dtype))
            else:
                batch.append(rng.randn(*shape).astype(x.dtype))
        return batch[0] if len(batch) == 1 else batch

    def _check(self, model, path):
        sample = self._sample_batch(model)
        expected = keras.tree.map_structure(
            lambda t: np.asarray(keras.ops.convert_to_numpy(t)),
            model(sample, training=False),
        )
        expected = keras.tree.flatten(expected)
        got = _export.run_saved_model(path, sample)
        got = got if isinstance(got, list) else [got]
        if len(got) != len(expected):
            raise ValueError(
                f"The SavedModel at {path!r} returns {len(got)} outputs, the "
                f"model {len(expected)}."
            )
        for i, (e, g) in enumerate(zip(expected, got)):
            err = float(np.max(np.abs(e.astype("float64") - g)))
            if not err <= self.atol:
                raise ValueError(
                    f"The SavedModel at {path!r} differs from the model on "
                    f"the sample batch: output {i} max abs difference {err} "
                    f"> atol={self.atol}."
                )
            if self.verbose:
                print(
                    f"Checked {path}: output {i} matches the model (max abs "
                    f"difference {err:.2e})."
                )


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
