"""Everything a layer's eager calls compiled goes with the layer.

On JAX and TensorFlow a layer called eagerly the same way a third time
runs a compiled program (`keras_norms/backend/compiled.py`). These tests
hold for whatever provides that speed: they only create, call and delete
layers, and look at what is left (the layer itself, and the process'
resident memory against the same loop with `keras.layers`).
"""

import gc
import os
import subprocess
import sys
import weakref

import keras
import numpy as np
import pytest

import keras_norms as kn
from tests import helpers

CALLS = 4  # eager calls per layer: past any warm-up, so a program is made


def _layers():
    # Channels-first BatchNormalization: on eager TensorFlow it takes the
    # compiled call, not the fused kernel.
    return [
        kn.LayerNormalization(),
        kn.GroupNormalization(groups=2),
        kn.BatchNormalization(axis=1),
    ]


def test_layers_called_eagerly_are_freed():
    from keras_norms.backend import compiled

    # Whatever store keeps compiled programs beside the layers: back to
    # its size once they are gone.
    store = getattr(compiled, "_PROGRAMS", {})
    gc.collect()  # layers of earlier tests, unreferenced, leave it first
    stored = len(store)
    x = helpers.random_input((2, 4, 3, 4))
    refs = []
    for _ in range(2):
        for layer in _layers():
            for _ in range(CALLS):
                layer(x, training=True)
            refs.append(weakref.ref(layer))
        del layer
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)
    assert len(store) == stored


# Resident memory kept per deleted layer, past the same loop with
# keras.layers.LayerNormalization. TensorFlow kept ~600 KB per layer when
# each layer's program was XLA-compiled (TensorFlow never frees an XLA
# executable: 747 KB measured here); now 170 KB (one-off caches still
# filling after the warm-up; the same ~65 KB a layer as Keras' own later).
MAX_EXTRA_KB_PER_LAYER = 350
_RSS_SCRIPT = """
import gc, os, sys
import numpy as np, keras, keras_norms as kn

def rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

x = np.random.RandomState(0).randn(2, 3, 4, 6).astype("float32")

def loop(module, n):
    for _ in range(n):
        layer = module.LayerNormalization()
        for _ in range({calls}):
            layer(x)
        del layer
    gc.collect()

growth = {{}}
for module in (keras.layers, kn):  # warm-up: one-off caches, allocator
    loop(module, {warm})
for name, module in (("keras", keras.layers), ("kn", kn)):
    before = rss_kb()
    loop(module, {n})
    growth[name] = rss_kb() - before
print(growth["keras"], growth["kn"])
"""


@pytest.mark.skipif(
    not os.path.exists("/proc/self/statm"), reason="reads /proc (Linux)"
)
def test_deleted_layers_keep_no_memory():
    if keras.backend.backend() == "torch":
        pytest.skip("nothing is compiled on torch (deterministic test)")
    n = 40
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _RSS_SCRIPT.format(calls=CALLS, warm=20, n=n),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    keras_kb, ours_kb = map(int, result.stdout.split()[-2:])
    extra = (ours_kb - keras_kb) / n
    assert extra < MAX_EXTRA_KB_PER_LAYER, (
        f"{extra:.0f} KB kept per deleted layer beyond keras.layers "
        f"(keras {keras_kb} KB, ours {ours_kb} KB for {n} layers)"
    )
