"""Run every script in examples/ at its smallest (CI) setting.

Each example runs in a fresh subprocess, once, on the TensorFlow backend
only (examples that need TensorFlow set it themselves; the others run on
any backend and the layer tests already cover all three), so that CI pays
for them once. Deselect them with `-m "not examples"`.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# script -> (arguments at the CI setting, extra environment, files under
# the output folder the run must leave). "{out}" is a temporary folder.
CASES = {
    "demo.py": (["--epochs", "1", "--verbose", "0"], {}, []),
    "switchable_importance.py": (
        ["--out", "{out}/switchable_importance.png"],
        {"KERAS_NORMS_EXAMPLE_SMALL": "1"},
        ["switchable_importance.png"],
    ),
    "sync_batchnorm.py": (["--epochs", "1"], {}, []),
    "fold_and_export.py": (["--epochs", "1"], {}, []),
    "precise_batchnorm.py": (
        ["--epochs", "1", "--out", "{out}/precise.png"],
        {},
        ["precise.png"],
    ),
    "batch_size_study.py": (
        ["--quick", "--out", "{out}"],
        {},
        ["batch_size_study.png", "batch_size_study.json"],
    ),
    "frozen_statistics_finetune.py": (
        ["--quick", "--out", "{out}"],
        {},
        ["frozen_statistics_finetune.png"],
    ),
    "plot_normalization_axes.py": (
        ["--out", "{out}"],
        {},
        ["normalization_axes.png"],
    ),
}

pytestmark = [
    pytest.mark.examples,
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="examples run once, on the TensorFlow backend only",
    ),
]


@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs(script, tmp_path):
    path = EXAMPLES / script
    if not path.exists():
        pytest.skip(f"examples/{script} is not in this checkout")
    args, extra_env, expected = CASES[script]
    args = [a.replace("{out}", str(tmp_path)) for a in args]
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="3",
        MPLBACKEND="Agg",
        PYTHONPATH=str(ROOT),
        **extra_env,
    )
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(path), *args],
        cwd=tmp_path,  # anything written to a relative path stays here
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, (
        f"examples/{script} exited {proc.returncode} after {seconds:.0f} s\n"
        f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    )
    for name in expected:
        assert (tmp_path / name).stat().st_size > 0, f"{script}: no {name}"
    print(f"examples/{script}: {seconds:.1f} s")


def test_every_example_is_covered():
    """A new example must get a CI setting here, or CI never runs it."""
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    missing = sorted(scripts - set(CASES))
    assert not missing, (
        f"add a CI setting to tests/test_examples.py for {missing}"
    )
