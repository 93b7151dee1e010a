"""JAX: one compiled program per eager layer call.

Run eagerly (a model called outside `jit`, `stateless_call` in a plain
Python loop, `jax.grad` without `jit`), JAX dispatches every `jax.numpy`
op on its own: the moments, the scale and shift and the moving-statistics
update are a dozen separately launched kernels, each a full pass where the
compiler would have fused them. `benchmarks/bench_norms.py` measured the
eager `keras.ops` path 1.1-1.5x slower than Keras' own layers and 2-10x
slower than the same layer compiled.

So, on JAX only, a layer called on concrete arrays runs its own
`stateless_call` through `jax.jit`: the variables' current values go in,
the output and the new non-trainable values (moving statistics) come out
and are assigned back, exactly what the eager call would have done, in
one compiled program. Inside a trace (`jit`, `model.fit`, `predict`) the
layer's ops already join the caller's program, so nothing changes there;
under eager `jax.grad` (values wrapped in JVP tracers over concrete arrays)
the compiled function is differentiated like any `jax.jit` function.

One compiled function per layer, call arguments (`training`) and input
shape and dtype (`jax.jit`'s own cache), built on the first call.
"""

import threading

import jax

_local = threading.local()


def _concrete(x):
    """Whether `x` holds values now (not a value inside a jit trace)."""
    while isinstance(x, jax.core.Tracer):
        primal = getattr(x, "primal", None)  # JVP tracers of eager grad
        if primal is None:
            return False
        x = primal
    return isinstance(x, jax.Array)


def compiled_call(layer, inputs, **call_kwargs):
    """`layer(inputs, **call_kwargs)` as one compiled program, or `None`.

    `None` where it does not apply: inputs that are not one concrete (or
    eager-JVP) array, call arguments that are not plain Python values, or
    when called from inside the compiled function itself.
    """
    if getattr(_local, "tracing", False) or not _concrete(inputs):
        return None
    try:
        key = tuple(sorted(call_kwargs.items()))
        hash(key)
    except TypeError:  # a tensor-valued argument (mask): not a cache key
        return None
    cache = layer.__dict__.get("_kn_compiled_calls")
    if cache is None:
        cache = {}
        # Plain attribute: not a tracked Keras layer attribute or weight.
        object.__setattr__(layer, "_kn_compiled_calls", cache)
    fn = cache.get(key)
    if fn is None:
        fn = cache[key] = jax.jit(_stateless(layer, call_kwargs))
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]
    outputs, new_values = fn(trainable, non_trainable, inputs)
    for variable, value in zip(layer.non_trainable_variables, new_values):
        variable.assign(value)
    return outputs


def _stateless(layer, call_kwargs):
    def run(trainable, non_trainable, inputs):
        _local.tracing = True
        try:
            return layer.stateless_call(
                trainable, non_trainable, inputs, **call_kwargs
            )
        finally:
            _local.tracing = False

    return run
