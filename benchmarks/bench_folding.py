"""Inference latency of folded over unfolded exports, per deployment runtime.

For each model (keras.applications MobileNetV2 and ResNet50 at 224x224x3,
`weights=None`, seeded random weights, logits out; the digits CNN of
`examples/demo.py` at 8x8x1) and each runtime, the model is exported twice
with `keras_norms.export(..., verify=True)`: `fold=False` (as it is) and
`fold=True` (inference form: every BatchNormalization folded into the
convolution before it). Every BatchNormalization layer first gets random
moving statistics, gamma and beta, so folding is not a no-op; the export's
verification checks each artifact against the Keras model in the runtime.

Runtimes (artifact, how it is loaded and run; each through its module in
`keras_norms._runtimes`, the code `keras_norms.export` checks artifacts
with):

- `saved_model_xla`: `format="tf_saved_model"` (XLA-compiled serving
  function), `tf.saved_model.load(path).signatures["serving_default"]`;
- `onnxruntime`: `format="onnx"`, `InferenceSession`, CPUExecutionProvider;
- `litert`: `format="litert"`, `ai_edge_litert` `Interpreter` (its default
  XNNPACK delegate) through its signature runner, input resized to the
  batch;
- `openvino`: `format="openvino"`, `Core().compile_model` on CPU with
  `INFERENCE_PRECISION_HINT=f32` (as `keras_norms.export` checks it),
  LATENCY hint, the model reshaped to the static batch first;
- `torch`: `format="torch"` exported from the torch backend (a child
  process with `KERAS_BACKEND=torch`, loading the `.keras` file the
  TensorFlow child saved, so the weights are the same), dynamic batch,
  `torch.export.load(path).module()` run eagerly under `torch.no_grad()`.

The other artifacts are exported from the TensorFlow backend with a dynamic
batch. Then ONE process per runtime, importing that runtime alone (no
Keras), times both variants of every (model, batch) cell INTERLEAVED: after
a warm-up, each round times each variant once (the order alternating from
round to round), one timing being the mean of enough calls to last >= 20 ms;
the table gives medians over rounds and their ratio folded/unfolded, with
the quartiles of the per-round ratios as the noise band. Every runtime runs
with `--threads` (default 2) intra-op threads and 1 inter-op thread
(TensorFlow's thread pools, onnxruntime `intra_op_num_threads`, LiteRT
`num_threads`, OpenVINO `INFERENCE_NUM_THREADS` with one stream,
`torch.set_num_threads`), and `OMP_NUM_THREADS` set to the same. The same
process also counts the operations each runtime actually executes
(onnxruntime's optimized graph, OpenVINO's runtime model, LiteRT's ops, the
exported torch graph, XLA's optimized HLO), to see which
runtimes fold BatchNormalization themselves.

Run (from the repository root; several minutes to ~25 on 2 cores):

    python benchmarks/bench_folding.py            # full grid, JSON + figure
    python benchmarks/bench_folding.py --quick    # smoke run: digits CNN only
    python benchmarks/bench_folding.py --models digits_cnn --runtimes onnxruntime torch --batches 1 --rounds 5
    python benchmarks/bench_folding.py --table    # Markdown tables from the JSON
    python benchmarks/bench_folding.py --plot     # the figure from the JSON
    python benchmarks/bench_folding.py --control --threads 1 --out o.json  # A/A control, 1 thread
    python benchmarks/bench_folding.py --workdir /tmp/bf --reuse-exports ...  # keep / reuse exports
    KERAS_BACKEND=jax python benchmarks/bench_folding.py --keras  # Keras-level folding only

`--control` also times the unfolded artifact loaded a second time, in the
same rounds: the spread of that A/A ratio is the noise floor of a cell.
A failed export or timing (or a child past its timeout) is recorded in the
JSON as a failed cell, and the run goes on.

`--keras` is the earlier benchmark: a small Conv-BN-ReLU ResNet as a Keras
model, unfolded vs folded (`fold_batch_norms`) vs folded + XLA SavedModel,
in the backend of this process. Never run as a test.
"""

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_JSON = os.path.join(HERE, "results", "bench_folding_runtimes.json")
DEFAULT_FIGURE = os.path.join(ROOT, "docs", "figures", "folding_runtimes.png")

MODELS = ("digits_cnn", "mobilenet_v2", "resnet50")
RUNTIMES = ("saved_model_xla", "onnxruntime", "litert", "openvino", "torch")
FORMAT = {
    "saved_model_xla": "tf_saved_model",
    "onnxruntime": "onnx",
    "litert": "litert",
    "openvino": "openvino",
    "torch": "torch",
}
SUFFIX = {
    "tf_saved_model": "",
    "onnx": ".onnx",
    "litert": ".tflite",
    "openvino": ".xml",
    "torch": ".pt2",
}
INPUT_SHAPE = {
    "digits_cnn": (8, 8, 1),
    "mobilenet_v2": (224, 224, 3),
    "resnet50": (224, 224, 3),
}
# Intra-op threads of every runtime (children read it from the environment).
THREADS = int(os.environ.get("BENCH_FOLDING_THREADS", "2"))
VARIANTS = ("unfolded", "folded")
CONTROL = "unfolded_again"
# Seconds a child may take before it is stopped (and its cells recorded as
# failed): exports per (backend, model), timing per runtime.
EXPORT_TIMEOUT = {"digits_cnn": 600, "mobilenet_v2": 1200, "resnet50": 1800}
TIME_TIMEOUT = 1800
MIN_TIMING_S = 0.02


def backend_of(runtime):
    return "torch" if runtime == "torch" else "tensorflow"


def artifact_path(workdir, model, runtime, variant):
    fmt = FORMAT[runtime]
    return os.path.join(workdir, f"{model}_{runtime}_{variant}{SUFFIX[fmt]}")


# ---------------------------------------------------------------------------
# Export (a child process per backend and model; imports Keras)
# ---------------------------------------------------------------------------
def build_model(name):
    """A seeded model with random BatchNormalization statistics."""
    import keras

    keras.utils.set_random_seed(0)
    if name == "digits_cnn":
        sys.path.insert(0, os.path.join(ROOT, "examples"))
        import demo

        x_train = demo.load_data()[0]
        model = demo.build_model(demo.NORMS["BatchNormalization"], x_train)
    else:
        app = {
            "mobilenet_v2": keras.applications.MobileNetV2,
            "resnet50": keras.applications.ResNet50,
        }[name]
        model = app(
            weights=None,
            input_shape=INPUT_SHAPE[name],
            classifier_activation=None,
        )
    randomize_statistics(model)
    return model


def randomize_statistics(model, seed=0):
    """Random moving statistics, gamma and beta in every BatchNormalization."""
    rng = np.random.RandomState(seed)
    for layer in model.layers:
        if not hasattr(layer, "moving_variance"):
            continue
        shape = tuple(layer.moving_mean.shape)
        layer.moving_mean.assign(0.1 * rng.randn(*shape).astype("float32"))
        layer.moving_variance.assign(
            rng.uniform(0.5, 2, shape).astype("float32")
        )
        if getattr(layer, "gamma", None) is not None:
            layer.gamma.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
        if getattr(layer, "beta", None) is not None:
            layer.beta.assign(0.1 * rng.randn(*shape).astype("float32"))


def export_child(backend, model_name, runtimes, workdir):
    """Export both variants of `model_name` for `runtimes`; log each."""
    import keras

    import keras_norms as kn

    assert keras.backend.backend() == backend, keras.backend.backend()
    saved = os.path.join(workdir, f"{model_name}.keras")
    if backend == "tensorflow":
        model = build_model(model_name)
        model.save(saved)
    else:
        model = keras.saving.load_model(saved)
    # Keras' ONNX exporter on TensorFlow refuses a model never called
    # ("The model provided has never called"), whatever was exported first.
    model(np.zeros((1,) + INPUT_SHAPE[model_name], "float32"))
    log = os.path.join(workdir, "exports.jsonl")
    for runtime in runtimes:
        for variant in VARIANTS:
            path = artifact_path(workdir, model_name, runtime, variant)
            record = {
                "model": model_name,
                "runtime": runtime,
                "variant": variant,
            }
            start = time.perf_counter()
            try:
                kwargs = {}
                if runtime == "torch":
                    import torch

                    kwargs["dynamic_shapes"] = {
                        0: torch.export.Dim("batch", max=1024)
                    }
                report = kn.export(
                    model,
                    path,
                    format=FORMAT[runtime],
                    fold=variant == "folded",
                    verify=True,
                    overwrite=True,
                    **kwargs,
                )
                record.update(
                    ok=True, path=path, report=_jsonable(report.to_dict())
                )
            except Exception as e:  # recorded, the benchmark goes on
                record.update(
                    ok=False, error=f"{type(e).__name__}: {str(e)[-1500:]}"
                )
            record["seconds"] = round(time.perf_counter() - start, 1)
            print(
                f"  export {model_name} {runtime} {variant}: "
                f"{'ok' if record['ok'] else record['error'][:300]} "
                f"({record['seconds']} s)",
                flush=True,
            )
            with open(log, "a") as f:
                f.write(json.dumps(record) + "\n")


def _jsonable(d):
    return {
        k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
        for k, v in d.items()
    }


# ---------------------------------------------------------------------------
# Runtimes (the timing child; imports one runtime, no Keras)
# ---------------------------------------------------------------------------
def load_runtime(runtime, path, batch):
    """`run(x)` -> the output, of `path` loaded in `runtime` for `batch`.

    Through `keras_norms._runtimes` (the modules `keras_norms.export`
    checks its artifacts with), with THREADS intra-op threads and one
    inter-op thread; OpenVINO and LiteRT fixed to the batch.
    """
    from keras_norms import _runtimes

    loaded = _runtimes.load(FORMAT[runtime], path, threads=THREADS, batch=batch)
    return lambda x: loaded.run([x])[0]


def _histogram(names):
    counts = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return dict(sorted(counts.items()))


def ops_onnxruntime(path, workdir, x):
    """Op types in the .onnx file and in onnxruntime's optimized graph."""
    import onnx
    import onnxruntime as rt

    optimized = path[: -len(".onnx")] + ".ort_optimized.onnx"
    options = rt.SessionOptions()
    options.optimized_model_filepath = optimized
    options.intra_op_num_threads = THREADS
    rt.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    before = _histogram(n.op_type for n in onnx.load(path).graph.node)
    after = _histogram(n.op_type for n in onnx.load(optimized).graph.node)
    return before, after


def ops_openvino(path, workdir, x):
    """Op types in the OpenVINO IR and in the CPU plugin's runtime model."""
    import openvino as ov

    before = _histogram(
        op.get_type_name() for op in ov.Core().read_model(path).get_ops()
    )
    from keras_norms._runtimes import openvino_runtime

    compiled = openvino_runtime.load(path, threads=THREADS, batch=1).compiled
    runtime_model = compiled.get_runtime_model()
    after = _histogram(
        op.get_rt_info()["layerType"].astype(str)
        for op in runtime_model.get_ops()
    )
    return before, after


def ops_litert(path, workdir, x):
    """LiteRT's op list (the converter's graph is what the interpreter runs)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    ops = _histogram(op["op_name"] for op in interpreter._get_ops_details())
    return ops, ops


def ops_torch(path, workdir, x):
    """Call targets of the exported torch graph (what eager mode runs)."""
    import torch

    graph = torch.export.load(path).graph
    ops = _histogram(
        str(n.target).split(".")[1]
        if str(n.target).startswith("aten.")
        else str(n.target)
        for n in graph.nodes
        if n.op == "call_function"
    )
    return ops, ops


def ops_saved_model_xla(path, workdir, x):
    """Op types of the TF graph and HLO instructions XLA runs (batch 1).

    The HLO comes from XLA's own dump (`XLA_FLAGS=--xla_dump_to`), which
    must be set before TensorFlow starts: a child process per artifact
    (`tf_runtime` run on `x`).
    """
    import glob

    from keras_norms import _runtimes

    dump = path.rstrip("/") + ".xla_dump"
    _runtimes.run_in_child(
        "tf_saved_model",
        path,
        [x],
        env={"XLA_FLAGS": f"--xla_dump_to={dump} --xla_dump_hlo_as_text"},
        timeout=600,
    )
    files = glob.glob(os.path.join(dump, "*after_optimizations.txt"))
    # The serving function's module: the largest one compiled.
    text = max((open(f).read() for f in files), key=len)
    shutil.rmtree(dump, ignore_errors=True)
    return _hlo_histogram(text, entry=False), _hlo_histogram(text, entry=True)


def _hlo_histogram(text, entry):
    """Opcodes in an HLO module's text: all computations, or ENTRY alone."""
    import re

    counts = {}
    inside = not entry
    for line in text.splitlines():
        if entry and line.startswith("ENTRY"):
            inside = True
            continue
        if entry and inside and line.startswith("}"):
            break
        match = re.match(
            r"\s*(?:ROOT\s+)?%?[\w.\-]+ = .*? ([a-z][a-z\-]*)\(", line
        )
        if (
            inside
            and match
            and match.group(1)
            not in ("parameter", "constant", "tuple", "get-tuple-element")
        ):
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return dict(sorted(counts.items()))


OPS = {
    "saved_model_xla": ops_saved_model_xla,
    "onnxruntime": ops_onnxruntime,
    "openvino": ops_openvino,
    "litert": ops_litert,
    "torch": ops_torch,
}


def time_cell(fns, x, rounds, cell_seconds):
    """Interleaved medians of `fns` (name -> callable) on `x`."""
    for fn in fns.values():  # warm-up (compiles XLA / OpenVINO kernels)
        for _ in range(3):
            fn(x)
    single = {}
    for name, fn in fns.items():
        samples = []
        for _ in range(3):
            start = time.perf_counter()
            fn(x)
            samples.append(time.perf_counter() - start)
        single[name] = min(samples)
    reps = max(1, math.ceil(MIN_TIMING_S / min(single.values())))
    per_round = reps * sum(single.values())
    rounds = max(5, min(rounds, int(cell_seconds / per_round)))
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            fn = fns[name]
            start = time.perf_counter()
            for _ in range(reps):
                fn(x)
            times[name].append((time.perf_counter() - start) / reps)
    return times, reps, rounds


def _quartiles(values):
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def time_child(runtime, workdir, cells, rounds, cell_seconds):
    """Time every (model, batch) cell of one runtime; log each."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    log = os.path.join(workdir, f"time_{runtime}.jsonl")
    inspected = set()  # models whose executed ops are counted (once)
    for model, batch in cells:
        record = {"model": model, "runtime": runtime, "batch": batch}
        try:
            paths = {
                v: artifact_path(workdir, model, runtime, v) for v in VARIANTS
            }
            fns = {v: load_runtime(runtime, paths[v], batch) for v in VARIANTS}
            if os.environ.get("BENCH_FOLDING_CONTROL") == "1":
                # A/A control: the unfolded artifact loaded a second time.
                fns[CONTROL] = load_runtime(runtime, paths["unfolded"], batch)
            x = np.random.RandomState(1).randn(batch, *INPUT_SHAPE[model])
            x = x.astype("float32")
            outs = {v: np.asarray(fn(x), np.float64) for v, fn in fns.items()}
            diff = float(np.max(np.abs(outs["folded"] - outs["unfolded"])))
            scale = float(np.max(np.abs(outs["unfolded"])))
            times, reps, used = time_cell(fns, x, rounds, cell_seconds)
            ratios = [f / u for f, u in zip(times["folded"], times["unfolded"])]
            record.update(
                ok=True,
                rounds=used,
                calls_per_timing=reps,
                max_abs_difference=diff,
                output_scale=scale,
                ms={v: 1e3 * statistics.median(t) for v, t in times.items()},
                ms_quartiles={
                    v: [1e3 * q for q in _quartiles(t)]
                    for v, t in times.items()
                },
                ratio=statistics.median(times["folded"])
                / statistics.median(times["unfolded"]),
                round_ratio_quartiles=list(_quartiles(ratios)),
                times_ms={
                    v: [round(1e3 * s, 4) for s in t] for v, t in times.items()
                },
            )
            if runtime in OPS and model not in inspected:
                inspected.add(model)
                record["ops"] = {}
                for v in VARIANTS:
                    before, after = OPS[runtime](paths[v], workdir, x[:1])
                    record["ops"][v] = {"artifact": before, "executed": after}
            del fns
        except Exception as e:  # recorded, the benchmark goes on
            record.update(
                ok=False, error=f"{type(e).__name__}: {str(e)[-1500:]}"
            )
        line = f"  {runtime} {model} batch {batch}: "
        if record["ok"]:
            line += (
                f"unfolded {record['ms']['unfolded']:.3f} ms, folded "
                f"{record['ms']['folded']:.3f} ms, ratio {record['ratio']:.3f} "
                f"({record['rounds']} rounds)"
            )
        else:
            line += record["error"][:300]
        print(line, flush=True)
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------
# Orchestration (no Keras, no runtime in this process)
# ---------------------------------------------------------------------------
def _launcher():
    """`keras_norms._launch`, loaded from its file.

    It imports the standard library only, while `import keras_norms._launch`
    would run `keras_norms/__init__` (Keras and a backend) in this process.
    """
    spec = importlib.util.spec_from_file_location(
        "_bench_keras_norms_launch",
        os.path.join(ROOT, "keras_norms", "_launch.py"),
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _child(args, env_extra, timeout, keras):
    """Run this script with `args` in a child (`keras_norms._launch`).

    `keras=False`: the timing child, without `keras_norms/__init__` (no
    Keras). Its output goes to this process's; returns None, or the error.
    """
    launch = _launcher()
    env = {
        "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "OMP_NUM_THREADS": str(THREADS),
        **env_extra,
    }
    try:
        launch.run_module(
            "benchmarks.bench_folding",
            args,
            bare=not keras,
            env=env,
            timeout=timeout,
            what=f"bench_folding {args[0]} {args[1]}",
            capture_stdout=False,
            cwd=ROOT,
        )
    except launch.ChildProcessFailed as e:
        return str(e)
    return None


def _read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_exports(models, runtimes, workdir, reuse):
    log = os.path.join(workdir, "exports.jsonl")
    done = {
        (r["model"], r["runtime"], r["variant"])
        for r in _read_jsonl(log)
        if r["ok"] and reuse
    }
    if not reuse and os.path.exists(log):
        os.remove(log)
    failures = []
    for model in models:
        for backend in ("tensorflow", "torch"):
            todo = [
                r
                for r in runtimes
                if backend_of(r) == backend
                and any((model, r, v) not in done for v in VARIANTS)
            ]
            if not todo:
                continue
            if backend == "torch" and not os.path.exists(
                os.path.join(workdir, f"{model}.keras")
            ):
                failures.append(
                    {
                        "model": model,
                        "runtime": "torch",
                        "error": "no .keras file",
                    }
                )
                continue
            print(
                f"exporting {model} from {backend}: {', '.join(todo)}",
                flush=True,
            )
            error = _child(
                ["--_export", backend, model, ",".join(todo), workdir],
                {"KERAS_BACKEND": backend},
                EXPORT_TIMEOUT[model],
                keras=True,
            )
            if error:
                failures.append(
                    {"model": model, "backend": backend, "error": error}
                )
    records = {}
    for r in _read_jsonl(log):
        records[(r["model"], r["runtime"], r["variant"])] = r
    return records, failures


def run_timings(
    models, runtimes, batches, workdir, exports, rounds, cell_seconds
):
    results = []
    for runtime in runtimes:
        cells, skipped = [], []
        for model in models:
            missing = [
                v
                for v in VARIANTS
                if not exports.get((model, runtime, v), {}).get("ok")
            ]
            for batch in batches:
                if missing:
                    errors = [
                        exports.get((model, runtime, v), {}).get(
                            "error", "not exported"
                        )
                        for v in missing
                    ]
                    skipped.append(
                        {
                            "model": model,
                            "runtime": runtime,
                            "batch": batch,
                            "ok": False,
                            "error": "export failed: " + " | ".join(errors),
                        }
                    )
                else:
                    cells.append((model, batch))
        log = os.path.join(workdir, f"time_{runtime}.jsonl")
        if os.path.exists(log):
            os.remove(log)
        error = None
        if cells:
            print(f"timing {runtime}: {len(cells)} cells", flush=True)
            error = _child(
                [
                    "--_time",
                    runtime,
                    workdir,
                    json.dumps(cells),
                    str(rounds),
                    str(cell_seconds),
                ],
                {},
                TIME_TIMEOUT,
                keras=False,
            )
        got = {(r["model"], r["batch"]): r for r in _read_jsonl(log)}
        for model, batch in cells:
            results.append(
                got.get(
                    (model, batch),
                    {
                        "model": model,
                        "runtime": runtime,
                        "batch": batch,
                        "ok": False,
                        "error": f"timing process: {error}",
                    },
                )
            )
        results.extend(skipped)
    return results


def _version(package):
    """The installed version of `package` (or of its `-cpu` build)."""
    for name in (package, package + "-cpu"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return None


def machine_info():
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "threads": {
            "intra_op": THREADS,
            "inter_op": 1,
            "OMP_NUM_THREADS": THREADS,
        },
        "versions": {
            p: _version(p)
            for p in (
                "keras",
                "tensorflow",
                "torch",
                "onnx",
                "onnxruntime",
                "tf2onnx",
                "ai-edge-litert",
                "openvino",
                "numpy",
            )
        },
    }


# ---------------------------------------------------------------------------
# Reports: console table, Markdown tables, figure
# ---------------------------------------------------------------------------
def _cells(data):
    order = {r: i for i, r in enumerate(RUNTIMES)}
    morder = {m: i for i, m in enumerate(MODELS)}
    return sorted(
        data["results"],
        key=lambda r: (
            order.get(r["runtime"], 9),
            morder.get(r["model"], 9),
            r["batch"],
        ),
    )


def paired_ratio(record):
    """Median and quartiles of the per-round ratios folded/unfolded.

    Each round times both variants back to back, so a round's ratio
    cancels drifts in machine load that the ratio of medians keeps.
    """
    return _paired(record, "folded")


def _paired(record, variant):
    t = record["times_ms"]
    ratios = [f / u for f, u in zip(t[variant], t["unfolded"])]
    lo, hi = _quartiles(ratios)
    return statistics.median(ratios), lo, hi


def _error_line(record):
    lines = [line for line in record["error"].splitlines() if line.strip()]
    last = lines[-1][-160:].replace("|", "/") if lines else "failed"
    if record["error"].startswith("export failed") and len(lines) > 1:
        last = "export failed: " + last
    return last


def markdown_table(data):
    """The timing table (Markdown) of a results JSON."""
    control = any(CONTROL in r.get("times_ms", {}) for r in data["results"])
    lines = [
        "| runtime | model | batch | unfolded ms | folded ms | "
        "folded/unfolded (medians) | per-round ratio: median [q1, q3] | "
        + ("A/A control: median [q1, q3] | " if control else "")
        + "rounds |",
        "|---|---|---:|---:|---:|---:|---|"
        + ("---|" if control else "")
        + "---:|",
    ]
    for r in _cells(data):
        head = f"| {r['runtime']} | {r['model']} | {r['batch']} |"
        if not r["ok"]:
            empty = " |" if control else ""
            lines.append(
                f"{head} failed | failed | | {_error_line(r)} |{empty} |"
            )
            continue
        med, lo, hi = paired_ratio(r)
        row = (
            f"{head} {r['ms']['unfolded']:.3f} | {r['ms']['folded']:.3f} | "
            f"**{r['ratio']:.2f}** | {med:.2f} [{lo:.2f}, {hi:.2f}] | "
        )
        if control:
            med, lo, hi = _paired(r, CONTROL)
            row += f"{med:.2f} [{lo:.2f}, {hi:.2f}] | "
        lines.append(row + f"{r['rounds']} |")
    return "\n".join(lines)


def _ops_delta(a, b):
    """Op types whose count differs, as `type +n` (a over b)."""
    out = []
    for name in sorted(set(a) | set(b)):
        d = a.get(name, 0) - b.get(name, 0)
        if d:
            out.append(f"{name} {d:+d}")
    return ", ".join(out) if out else "none"


def markdown_ops_table(data):
    """What each runtime executes, unfolded vs folded (Markdown)."""
    lines = [
        "| runtime | model | ops in artifact (unfolded / folded) | ops executed (unfolded / folded) | executed, unfolded minus folded |",
        "|---|---|---:|---:|---|",
    ]
    for r in _cells(data):
        if not r.get("ops"):
            continue
        u, f = r["ops"]["unfolded"], r["ops"]["folded"]
        n = lambda h: sum(h.values())  # noqa: E731
        lines.append(
            f"| {r['runtime']} | {r['model']} | {n(u['artifact'])} / "
            f"{n(f['artifact'])} | {n(u['executed'])} / {n(f['executed'])} | "
            f"{_ops_delta(u['executed'], f['executed'])} |"
        )
    return "\n".join(lines)


def print_console(data):
    print(
        f"\n{'runtime':<16}{'model':<14}{'batch':>6}{'unfolded ms':>13}{'folded ms':>11}{'ratio':>7}  per-round median [q1, q3]"
    )
    for r in _cells(data):
        head = f"{r['runtime']:<16}{r['model']:<14}{r['batch']:>6}"
        if not r["ok"]:
            print(f"{head}  FAILED: {_error_line(r)}")
            continue
        med, lo, hi = paired_ratio(r)
        print(
            f"{head}{r['ms']['unfolded']:>13.3f}{r['ms']['folded']:>11.3f}"
            f"{r['ratio']:>7.2f}  {med:.2f} [{lo:.2f}, {hi:.2f}]"
        )


def plot(data, figure):
    """Grouped bars of folded/unfolded per runtime x model x batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [r for r in _cells(data) if r["ok"]]
    runtimes = [
        r for r in RUNTIMES if any(c["runtime"] == r for c in _cells(data))
    ]
    series = [
        (m, b)
        for m in MODELS
        for b in sorted({c["batch"] for c in cells})
        if any(c["model"] == m and c["batch"] == b for c in cells)
    ]
    colors = {
        "digits_cnn": "tab:green",
        "mobilenet_v2": "tab:blue",
        "resnet50": "tab:orange",
    }
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, (model, batch) in enumerate(series):
        xs, ys, err = [], [], [[], []]
        for j, runtime in enumerate(runtimes):
            c = next(
                (
                    c
                    for c in _cells(data)
                    if c["runtime"] == runtime
                    and c["model"] == model
                    and c["batch"] == batch
                ),
                None,
            )
            if c is None:
                continue
            x = j - 0.4 + width * (i + 0.5)
            if not c["ok"]:
                ax.text(
                    x,
                    0.05,
                    "export failed",
                    rotation=90,
                    fontsize=8,
                    ha="center",
                )
                continue
            med, lo, hi = paired_ratio(c)
            xs.append(x)
            ys.append(med)
            err[0].append(max(0.0, med - lo))
            err[1].append(max(0.0, hi - med))
        ax.bar(
            xs,
            ys,
            width,
            yerr=err,
            capsize=2,
            color=colors.get(model, "gray"),
            hatch="//" if batch != 1 else None,
            edgecolor="black",
            linewidth=0.4,
            label=f"{model}, batch {batch}",
        )
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_xticks(range(len(runtimes)))
    ax.set_xticklabels(runtimes)
    ax.set_ylabel("latency folded / unfolded (lower is better)")
    ax.set_title(
        "BN folding per runtime: median of the per-round ratios (bars: q1-q3)"
        f"\n{data['machine']['cpu_count']} shared CPUs, "
        f"{data['machine']['threads']['intra_op']} threads per runtime"
    )
    ax.legend(fontsize=8, ncol=3, loc="upper left")
    ymax = max([paired_ratio(c)[2] for c in cells] + [1.1])
    ax.set_ylim(0, ymax * 1.05)
    fig.tight_layout()
    os.makedirs(os.path.dirname(figure), exist_ok=True)
    fig.savefig(figure, dpi=110)
    print(f"figure written to {figure}")


# ---------------------------------------------------------------------------
# The earlier Keras-level benchmark (--keras)
# ---------------------------------------------------------------------------
def keras_resnet(blocks=3, width=32):
    """Conv-BN-ReLU stem and residual blocks, no biases before the BNs."""
    import keras

    L = keras.layers
    inputs = keras.Input((64, 64, 3))
    x = L.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = L.ReLU()(L.BatchNormalization()(x))
    for i in range(blocks):
        y = L.Conv2D(width, 3, padding="same", use_bias=False)(x)
        y = L.ReLU()(L.BatchNormalization()(y))
        y = L.Conv2D(width, 3, padding="same", use_bias=False)(y)
        y = L.BatchNormalization()(y)
        x = L.ReLU()(L.Add()([x, y]))
        if i == blocks // 2:
            x = L.Conv2D(width * 2, 1, strides=2, use_bias=False)(x)
            x = L.BatchNormalization()(x)
            width *= 2
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10)(x))


def compiled(model):
    """The model as a compiled function of its backend (no XLA on TF)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda x: model(x, training=False), jit_compile=False)
        return lambda x: fn(x).numpy()
    if backend == "jax":
        import jax

        fn = jax.jit(
            lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[
                0
            ]
        )
        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]
        return lambda x: np.asarray(fn(tv, ntv, x))
    import torch

    def run(x):
        with torch.no_grad():
            return keras.ops.convert_to_numpy(model(x, training=False))

    return run


def keras_mode(rounds, blocks):
    """Keras model unfolded vs folded vs folded + XLA SavedModel."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from keras_norms.folding import fold_batch_norms
    from keras_norms.saved_model import export_saved_model

    model = keras_resnet(blocks)
    randomize_statistics(model)
    folded = fold_batch_norms(model, verbose=0)
    x = np.random.RandomState(0).randn(32, 64, 64, 3).astype("float32")
    variants = {"unfolded": compiled(model), "folded": compiled(folded)}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "served")
        export_saved_model(folded, path, fold=False, verbose=0)
        if keras.backend.backend() != "torch":
            from keras_norms._runtimes import tf_runtime

            served = tf_runtime.load(path)
            variants["folded+XLA SavedModel"] = lambda x: served.run([x])[0]
        reference = variants["unfolded"](x)
        for name, fn in variants.items():
            err = np.abs(fn(x) - reference).max()
            print(f"{name:>24}: max abs difference {err:.1e}")
        times, _, used = time_cell(variants, x, rounds, cell_seconds=1e9)
    print(
        f"\nbackend {keras.backend.backend()}, batch 32 of 64x64x3, {blocks} "
        f"residual blocks, median of {used} interleaved rounds:"
    )
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["unfolded"]
    for name, m in medians.items():
        print(f"{name:>24}: {1e3 * m:8.2f} ms   speedup x{base / m:.2f}")


# ---------------------------------------------------------------------------
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", choices=MODELS, default=list(MODELS)
    )
    parser.add_argument(
        "--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES)
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument(
        "--rounds", type=int, default=15, help="rounds per cell (at least 5)"
    )
    parser.add_argument(
        "--cell-seconds",
        type=float,
        default=45.0,
        help="cap on a cell's timed rounds (fewer rounds, at least 5, for slow cells)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=THREADS,
        help="intra-op threads of every runtime (default 2)",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="also time the unfolded artifact loaded twice (an A/A noise control)",
    )
    parser.add_argument("--out", default=DEFAULT_JSON, help="results JSON")
    parser.add_argument("--figure", default=DEFAULT_FIGURE)
    parser.add_argument(
        "--workdir",
        help="keep the exports here (default: a temporary directory)",
    )
    parser.add_argument(
        "--reuse-exports",
        action="store_true",
        help="skip exports already in --workdir",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: digits CNN, 5 rounds"
    )
    parser.add_argument(
        "--table",
        action="store_true",
        help="print the Markdown tables of --out",
    )
    parser.add_argument(
        "--plot", action="store_true", help="draw --figure from --out"
    )
    parser.add_argument(
        "--keras",
        action="store_true",
        help="the Keras-level benchmark (this backend)",
    )
    parser.add_argument(
        "--blocks", type=int, default=3, help="--keras: residual blocks"
    )
    parser.add_argument("--_export", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--_time", nargs=5, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args._export:
        backend, model, runtimes, workdir = args._export
        return export_child(backend, model, runtimes.split(","), workdir)
    if args._time:
        runtime, workdir, cells, rounds, cell_seconds = args._time
        cells = [tuple(c) for c in json.loads(cells)]
        return time_child(
            runtime, workdir, cells, int(rounds), float(cell_seconds)
        )
    if args.keras:
        return keras_mode(args.rounds, args.blocks)
    if args.table or args.plot:
        with open(args.out) as f:
            data = json.load(f)
        if args.table:
            print(markdown_table(data))
            print()
            print(markdown_ops_table(data))
        if args.plot:
            plot(data, args.figure)
        return data
    global THREADS
    THREADS = args.threads
    os.environ["BENCH_FOLDING_THREADS"] = str(args.threads)
    os.environ["BENCH_FOLDING_CONTROL"] = "1" if args.control else "0"
    if args.quick:
        args.models, args.rounds = ["digits_cnn"], 5
        if args.out == DEFAULT_JSON:  # keep the committed results
            args.out = os.path.join(
                tempfile.gettempdir(), "bench_folding_quick.json"
            )
    start = time.perf_counter()
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_folding_")
    os.makedirs(workdir, exist_ok=True)
    try:
        data = _run(args, workdir, start)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print_console(data)
    print(
        f"\nresults written to {args.out} ({data['settings']['total_seconds']} s)"
    )
    if not args.quick or args.figure != DEFAULT_FIGURE:
        plot(data, args.figure)
    return data


def _run(args, workdir, start):
    """Export, time, and write the JSON; the results."""
    exports, failures = run_exports(
        args.models, args.runtimes, workdir, args.reuse_exports
    )
    export_s = time.perf_counter() - start
    results = run_timings(
        args.models,
        args.runtimes,
        args.batches,
        workdir,
        exports,
        args.rounds,
        args.cell_seconds,
    )
    data = {
        "machine": machine_info(),
        "settings": {
            "models": args.models,
            "runtimes": args.runtimes,
            "batches": args.batches,
            "rounds": args.rounds,
            "cell_seconds": args.cell_seconds,
            "control": args.control,
            "min_timing_s": MIN_TIMING_S,
            "export_seconds": round(export_s, 1),
            "total_seconds": round(time.perf_counter() - start, 1),
        },
        "exports": [
            {k: v for k, v in r.items() if k != "path"}
            for r in exports.values()
        ],
        "export_failures": failures,
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(data, f, indent=1)
    return data


if __name__ == "__main__":
    main()
