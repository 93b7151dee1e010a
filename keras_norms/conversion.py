"""Swap the normalization layers of a model for keras_norms ones.

`convert(model)` turns a model built with `keras.layers` norms into one
built with keras_norms' drop-in layers (same arguments, same weights, same
outputs); `convert_sync_batchnorm(model)` turns every BatchNormalization
into a `SyncBatchNormalization`, as `torch.nn.SyncBatchNorm.
convert_sync_batchnorm` does for PyTorch modules. Both rebuild the graph
with the machinery the folding tools share (`keras_norms._graph`:
`clone_model` with a `clone_function`) and leave the original model
untouched.
"""

import keras

from keras_norms import _graph
from keras_norms import _legacy_configs
from keras_norms.layers import batch_normalization as _bn
from keras_norms.layers import group_normalization as _gn
from keras_norms.layers import layer_normalization as _ln
from keras_norms.layers import rms_normalization as _rms
from keras_norms.layers import sync_batch_normalization as _sync

__all__ = ["convert", "convert_sync_batchnorm"]


def _keras_to_keras_norms():
    """Exact Keras class -> keras_norms drop-in class."""
    pairs = {
        keras.layers.BatchNormalization: _bn.BatchNormalization,
        keras.layers.LayerNormalization: _ln.LayerNormalization,
        keras.layers.GroupNormalization: _gn.GroupNormalization,
    }
    keras_rms = getattr(keras.layers, "RMSNormalization", None)
    if keras_rms is not None:
        pairs[keras_rms] = _rms.RMSNormalization
    return pairs


def convert(model):
    """A copy of `model` whose Keras norms are keras_norms layers.

    Every `keras.layers.BatchNormalization`, `LayerNormalization`,
    `GroupNormalization` and `RMSNormalization` (exactly those classes, not
    user subclasses, whose behaviour may differ) becomes the keras_norms
    layer of the same name and kind, made from the Keras layer's
    `get_config()` (every argument carries over: the keras_norms layers are
    drop-in replacements, with the same weights in the same order), with
    the weights copied by `set_weights`. Every other layer is a fresh copy
    with copied weights; operations recorded in a functional graph that are
    not layers (`keras.ops` calls such as `x + y`, as in
    `keras.applications.ConvNeXtTiny`) are stateless and kept as they are.
    The new model computes the same outputs, with
    `training=False` and with `training=True`, and trains the same way; the
    original model is not modified and shares no weights with it.

    Sequential and functional models are supported, and so are
    Sequential/functional models nested in them (converted recursively).
    Norms inside other wrappers (`TimeDistributed`, `Bidirectional`) are
    copied unchanged.

    A `keras.layers.LayerNormalization(rms_scaling=True)` (deprecated in
    Keras, which scales by the variance, not the mean square) converts to
    ours with the same deprecated behaviour; prefer
    `keras.layers.RMSNormalization` (which converts too).

    Given a serialized layer (a dict `{"class_name": ..., "config": ...}`)
    from `tf_keras` (Keras 2) or TensorFlow Addons instead of a model, it
    returns the keras_norms twin of that layer, unbuilt:
    `BatchNormalization` (`virtual_batch_size` included; `fused` dropped;
    a built `axis` list such as `[3]` taken as its one axis),
    `LayerNormalization`, `GroupNormalization`,
    `Addons>GroupNormalization`, `Addons>InstanceNormalization`,
    `Addons>FilterResponseNormalization` (whose `axis` lists the spatial
    axes; ours is the channel axis) and `Addons>WeightNormalization`
    (Addons' `data_init=True` default kept). Load the weights with
    `set_weights` after building: the twins create the same weights in the
    same order.

    Args:
        model: A built `keras.Sequential` or functional `keras.Model`, or a
            serialized tf_keras / TF Addons layer (a dict).

    Returns:
        The new model (or layer).

    Raises:
        ValueError: If the model is not built, or is a subclassed model
            whose layer graph cannot be read; or a layer config has no
            twin or an argument the twin cannot take.

    Examples:
        >>> model = keras.Sequential([
        ...     keras.Input((4,)),
        ...     keras.layers.Dense(3),
        ...     keras.layers.BatchNormalization(),
        ... ])
        >>> new = kn.convert(model)
        >>> isinstance(new.layers[-1], kn.BatchNormalization)
        True
        >>> x = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
        >>> y, y_new = model.predict(x, verbose=0), new.predict(x, verbose=0)
        >>> np.allclose(y, y_new)
        True
        >>> legacy = {"class_name": "BatchNormalization",
        ...           "config": {"axis": [3], "virtual_batch_size": 8}}
        >>> kn.convert(legacy).virtual_batch_size
        8
    """
    if isinstance(model, dict):
        return _legacy_configs.layer_from_config(model)
    _graph.check_graph_model(model, "convert the normalization layers of")
    pairs = _keras_to_keras_norms()

    def target(layer):
        return pairs.get(type(layer))

    return _replace(model, target)


def convert_sync_batchnorm(model):
    """A copy of `model` whose BatchNormalization layers are synchronized.

    Every `keras.layers.BatchNormalization` and
    `keras_norms.layers.BatchNormalization` (exactly those classes; a
    `SyncBatchNormalization` is copied as it is) becomes a
    `keras_norms.layers.SyncBatchNormalization` of the same name, made from
    its `get_config()` (so `synchronized=True` whatever it was), with its
    weights (`gamma`, `beta`, moving statistics) copied: under a
    distribution strategy the batch statistics are then computed over the
    global batch, across replicas. On a single device it computes exactly
    what the original model does, with `training=False` and `training=True`.
    The PyTorch counterpart is `torch.nn.SyncBatchNorm.
    convert_sync_batchnorm`. Other layers are fresh copies with copied
    weights (operations that are not layers, `keras.ops` calls recorded in
    the graph, are kept as they are); the original model is not modified. Nested Sequential and
    functional models are converted recursively.

    Args:
        model: A built `keras.Sequential` or functional `keras.Model`.

    Returns:
        The new model.

    Raises:
        ValueError: If the model is not built, or is a subclassed model
            whose layer graph cannot be read.

    Examples:
        >>> model = keras.Sequential([
        ...     keras.Input((4,)),
        ...     keras.layers.Dense(3),
        ...     keras.layers.BatchNormalization(),
        ... ])
        >>> synced = kn.convert_sync_batchnorm(model)
        >>> isinstance(synced.layers[-1], kn.SyncBatchNormalization)
        True
    """
    _graph.check_graph_model(
        model, "convert the BatchNormalization layers of"
    )
    sources = (keras.layers.BatchNormalization, _bn.BatchNormalization)

    def target(layer):
        if type(layer) in sources:
            return _sync.SyncBatchNormalization
        return None

    return _replace(model, target)


def _replace(model, target):
    """Rebuild `model`, `target(layer)`'s class replacing each layer."""

    def clone_function(layer, assignments):
        if isinstance(layer, keras.Model):
            # A nested subclassed model: its norms cannot be reached.
            _graph.check_graph_model(
                layer,
                f"convert the norms inside model '{model.name}', as it nests",
            )
            return _replace(layer, target)
        cls = target(layer)
        if cls is None:
            return _graph.copy_layer(layer, assignments)
        config = layer.get_config()
        try:
            new = cls.from_config(config)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"Cannot convert layer '{layer.name}' "
                f"({type(layer).__name__}) to {cls.__name__}: {error} "
                f"Received: layer={layer.name}"
            ) from error
        assignments.append((new, layer.get_weights()))
        return new

    return _graph.rebuild_model(model, clone_function)
