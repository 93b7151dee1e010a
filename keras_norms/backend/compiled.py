"""Eager calls compiled: one program per layer call, on JAX and TensorFlow.

Run eagerly (a model called outside `jit`/`tf.function`, `stateless_call`
in a Python loop, `jax.grad` or a `GradientTape` without compilation),
JAX and TensorFlow launch every op on its own: the moments, the scale and
shift and the moving-statistics update are a dozen separate kernels, each
a full pass over the tensor where a compiler would fuse them.
`benchmarks/bench_norms.py` measured that op-by-op path 1.1-1.5x slower
than Keras' own layers on JAX, and 2-4x slower than the same layer
compiled.

So a layer called eagerly on concrete tensors, once it has been called
the same way (same call arguments, input shape and dtype, and the same
plain Python attributes: `trainable`, `momentum`, `use_global_stats`...)
`WARM_UP` times before, runs its own `stateless_call` compiled (`jax.jit`
on JAX; a `tf.function` graph on TensorFlow, see below): the variables'
current values go in, the output and the new non-trainable values (moving
statistics) come out and are assigned back, exactly what the eager call
does, in one program. The warm-up keeps one-off calls (building a model,
a test) from paying for a compilation they never recoup. Inside a trace
(`jit`, `tf.function`, `model.fit`, `predict`) the layer's ops already
join the caller's program: nothing changes there. Under eager `jax.grad`
(values in JVP tracers over concrete arrays) and under a `GradientTape`,
the compiled function is differentiated like any other.

Memory: everything compiled for a layer is freed with the layer. The
programs are kept in a `WeakKeyDictionary` keyed on the layer and hold it
only weakly. On TensorFlow they are graph functions, not XLA ones
(`jit_compile=False`): TensorFlow keeps every XLA executable it compiles
in a per-device cache keyed on the function's (unique) name, which
nothing evicts, so one XLA program per layer kept about 0.6 MB per layer
called three times for the life of the process, deleted or not (200
layers: RSS +89 MB, against +12 MB for `keras.layers`). A graph function
is freed with its `tf.function`, and still runs the call in one dispatch
(and TensorFlow's fused batch norm inside it, which XLA excludes). JAX
frees a `jax.jit` program's executable with the function (its own caches
are bounded). `tests/test_memory.py` checks both.

At most `MAX_PROGRAMS` programs per layer; calls beyond run op by op, as
do calls whose first compilation failed. BatchNormalization on eager
TensorFlow takes the fused kernel (`tf_fused.py`) first where it is the
faster, channels-last, and this path first channels-first.
"""

import threading
import weakref

import keras

from keras_norms import backend as kn_backend

WARM_UP = 2  # eager calls of one signature before it is compiled
MAX_PROGRAMS = 8  # compiled programs kept per layer

_local = threading.local()
# layer -> {call signature: [eager calls seen, compiled program]}
_PROGRAMS = weakref.WeakKeyDictionary()


def compiled_call(layer, inputs, **call_kwargs):
    """`layer(inputs, **call_kwargs)` as one compiled program, or `None`.

    `None` where it does not apply (see the module docstring): another
    backend, inputs that are not one concrete tensor, call arguments that
    are not plain Python values, a signature still warming up, or a call
    from inside the compiled function itself.
    """
    backend = keras.backend.backend()
    if backend not in ("jax", "tensorflow"):
        return None
    if getattr(_local, "tracing", False) or not _concrete(inputs, backend):
        return None
    if kn_backend.num_replicas() > 1:
        # A replica of tf.distribute running eagerly (MirroredStrategy's
        # threads): its collectives stay with the op-by-op path.
        return None
    try:
        key = (
            tuple(sorted(call_kwargs.items())),
            tuple(inputs.shape),
            str(inputs.dtype),
            _python_state(layer),
        )
        hash(key)
    except TypeError:  # a tensor-valued argument (mask): not a cache key
        return None
    cache = _PROGRAMS.get(layer)
    if cache is None:
        # Kept beside the layer, not on it: nothing for Keras to track,
        # save, copy or pickle; freed with the layer.
        cache = _PROGRAMS[layer] = {}
    entry = cache.get(key)
    if entry is None:
        if len(cache) >= MAX_PROGRAMS:
            return None
        entry = cache[key] = [0, None]
    if entry[1] is False:  # its compilation failed: op by op
        return None
    first = entry[1] is None
    if first:
        entry[0] += 1
        if entry[0] <= WARM_UP:
            return None
        entry[1] = _compile(_stateless(layer, call_kwargs), backend)
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]
    try:
        outputs, new_values = entry[1](trainable, non_trainable, inputs)
    except Exception:
        if not first:
            raise
        # Whatever the compiler refused (an op XLA lacks, a device), the
        # op-by-op path still runs, and raises what is the caller's error.
        entry[1] = False
        return None
    for variable, value in zip(layer.non_trainable_variables, new_values):
        variable.assign(value)
    return outputs


def _python_state(layer):
    """The layer's plain Python attributes, which a trace bakes in.

    `trainable`, `momentum`, `epsilon`, `use_global_stats`... are read
    while tracing; changing one (freezing the statistics for fine-tuning)
    must select another program, not reuse a stale one. ~10 us a call.
    """
    return tuple(
        sorted(
            (name, value)
            for name, value in layer.__dict__.items()
            if isinstance(value, (bool, int, float, str, type(None)))
        )
    )


def _concrete(x, backend):
    """Whether `x` holds values now (not a value inside a trace)."""
    if backend == "tensorflow":
        import tensorflow as tf

        return isinstance(x, tf.Tensor) and tf.executing_eagerly()
    import jax

    while isinstance(x, jax.core.Tracer):
        primal = getattr(x, "primal", None)  # JVP tracers of eager grad
        if primal is None:
            return False
        x = primal
    return isinstance(x, jax.Array)


def _compile(fn, backend):
    if backend == "tensorflow":
        import tensorflow as tf

        # Not XLA: TensorFlow never frees an XLA executable (module
        # docstring), and this program must go with its layer.
        return tf.function(fn, jit_compile=False)
    import jax

    return jax.jit(fn)


def programs(layer):
    """The layer's compiled programs by call signature (for tests)."""
    return {
        key: program
        for key, (_, program) in _PROGRAMS.get(layer, {}).items()
        if program
    }


def _stateless(layer, call_kwargs):
    # A weak reference: the program must not keep its layer (the cache's
    # key) alive.
    layer_ref = weakref.ref(layer)

    def run(trainable, non_trainable, inputs):
        _local.tracing = True
        try:
            return layer_ref().stateless_call(
                trainable, non_trainable, inputs, **call_kwargs
            )
        finally:
            _local.tracing = False

    return run
