"""keras_norms.inspection: what SwitchableNormalization layers learned."""

import keras
import numpy as np

import keras_norms as kn
from keras_norms import inspection


def test_switchable_importances_walks_nested_models():
    inner = keras.Sequential(
        [keras.Input((5, 5, 2)), kn.SwitchableNormalization(name="sn_inner")],
        name="inner",
    )
    model = keras.Sequential(
        [
            keras.Input((5, 5, 2)),
            inner,
            kn.SwitchableNormalization(name="sn_outer"),
            kn.BatchInstanceNormalization(name="bin"),
        ]
    )
    inner.get_layer("sn_inner").mean_weights.assign(
        np.array([0.0, np.log(2.0), np.log(3.0)], "float32")
    )
    imp = inspection.switchable_importances(model)
    assert list(imp) == ["sn_inner", "sn_outer"]
    np.testing.assert_allclose(
        [imp["sn_inner"]["mean"][k] for k in ("instance", "layer", "batch")],
        [1 / 6, 2 / 6, 3 / 6],
        rtol=1e-5,
    )
    for parts in imp["sn_outer"].values():
        np.testing.assert_allclose(list(parts.values()), [1 / 3] * 3, rtol=1e-5)
    table = inspection.format_importances(imp)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["layer", "mean", "IN"]
    assert lines[1].startswith("sn_inner") and "0.500" in lines[1]
