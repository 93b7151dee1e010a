"""Speed of keras_norms' normalizations against Keras' and the native kernels.

One command runs every backend, each in its own process, and prints one
table:

    python benchmarks/bench_norms.py            # the standard grid (~10 min)
    python benchmarks/bench_norms.py --quick    # a smoke run, seconds each
    python benchmarks/bench_norms.py --full     # every shape x layout
    python benchmarks/bench_norms.py --backends torch --layers GN BN

For each layer (BN, LN, IN, GN, BIN, SN, RMS, FRN, LRN, EVS0 and EVB0 for
EvoNorm-S0/B0), shape, layout (channels-last
`cl`, channels-first `cf`), execution (eager; compiled: `jax.jit`,
`tf.function(jit_compile=True)`; torch runs eager only) and mode (`infer`,
`train` forward, `grad` = forward + backward), on identical inputs in one
process, the contenders run interleaved over repeated rounds and the
medians are reported (see `_harness.py`):

- `ours/keras`: keras_norms over the `keras.layers` built-in (GN with
  groups=C stands in for IN; BIN, SN, FRN, LRN and EvoNorm have none);
- `ours/native`: over the backend's own kernel (`torch.nn.functional.*`,
  `F.rms_norm` for RMS, a plain torch expression for FRN + TLU,
  `F.local_response_norm` for LRN, timm's EvoNorm2dS0/B0 expressions
  for EVS0/EVB0 (torch only: no TF/JAX peer); `tf.nn.fused_batch_norm` for 4-D BN,
  `tf.nn.local_response_normalization` for LRN and TF ops otherwise;
  flax-style jnp, none for LRN), run in the same execution mode;
- `floor`: the fraction of the memory-bandwidth floor reached, (bytes that
  must move / time) / (bandwidth of a negation of the same tensor measured
  in the same rounds); 100% = as fast as moving the bytes can be;
- `ops/keras` (torch): keras_norms with its native fast paths disabled,
  i.e. the one `keras.ops` implementation, over the built-in: the
  "before" of the fast paths;
- `mem`: memory the training step keeps or needs, ours over native: on
  torch the bytes autograd saves for backward, on JAX the compiled
  function's temporary bytes (`memory_analysis()`); TF reports none.

`--json FILE` saves the rows; `--plot FILE` draws ours/keras and
ours/native per layer and backend (docs/figures/norm_ratios.png);
`--markdown FILE` writes the table of medians docs/performance.md shows;
`--from-json FILE` re-prints and re-plots saved rows without running.
Never run as a test.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ("torch", "jax", "tensorflow")
LAYERS = (
    "BN",
    "LN",
    "IN",
    "GN",
    "BIN",
    "SN",
    "RMS",
    "FRN",
    "LRN",
    "EVS0",
    "EVB0",
)
GRID_LAYERS = LAYERS[:6]  # every shape; RMS, FRN, LRN on their own shapes
# Layers whose training forward is the inference forward (no batch
# statistics, no moving statistics): no separate `train` mode.
NO_TRAIN = ("LN", "IN", "GN", "RMS", "FRN", "LRN", "EVS0")
MODES = ("infer", "train", "grad")
SHAPES = {  # channels-last shapes
    "small": (8, 16, 16, 32),
    "medium": (32, 32, 32, 64),
    "large": (32, 56, 56, 64),
}
SEQUENCE = ("seq", (32, 128, 1024))  # LayerNormalization over features
WIDE_GN = ("gn256", (8, 32, 32, 256))  # GroupNormalization(32)


def cases(preset, layers):
    """(kind, shape name, channels-last shape, layout, groups) tuples."""
    out = []
    if preset == "quick":
        for kind in ("BN", "LN", "GN", "RMS", "FRN"):
            out.append((kind, "small", SHAPES["small"], "cl", 8))
        return [c for c in out if c[0] in layers]
    for kind in GRID_LAYERS:
        for name, shape in SHAPES.items():
            layouts = (
                ("cl", "cf")
                if preset == "full" or name == "medium"
                else ("cl",)
            )
            for layout in layouts:
                out.append((kind, name, shape, layout, 8))
    out.append(("LN", SEQUENCE[0], SEQUENCE[1], "cl", 1))
    for layout in ("cl", "cf"):
        out.append(("GN", WIDE_GN[0], WIDE_GN[1], layout, 32))
    if preset == "full":
        for kind in ("RMS", "FRN"):
            for name, shape in SHAPES.items():
                for layout in ("cl", "cf"):
                    out.append((kind, name, shape, layout, 8))
    else:  # RMS on LN's feature shapes, FRN on BN/GN's image shapes
        out.append(("RMS", "medium", SHAPES["medium"], "cl", 8))
        for name in ("medium", "large"):
            out.append(("FRN", name, SHAPES[name], "cl", 8))
    out.append(("RMS", SEQUENCE[0], SEQUENCE[1], "cl", 1))
    for layout in ("cl", "cf"):  # LRN (TF's defaults) against tf.nn.lrn/F's
        out.append(("LRN", "medium", SHAPES["medium"], layout, 8))
    for kind in ("EVS0", "EVB0"):  # EvoNorm against timm's torch expressions
        for layout in ("cl", "cf"):
            out.append((kind, "medium", SHAPES["medium"], layout, 8))
    return [c for c in out if c[0] in layers]


# ---------------------------------------------------------------------------
# One backend, in this process
# ---------------------------------------------------------------------------
def run_backend(args):
    import numpy as np

    if args.threads:
        _limit_threads(args.threads)
    import _harness as H

    print(
        f"keras_norms from {os.path.dirname(H.kn.__file__)}",
        file=sys.stderr,
        flush=True,
    )
    if H.BACKEND == "torch":
        executions = ("eager",)
        contenders = ("ours", "keras", "native", "ours_ops", "copy")
    else:
        executions = ("compiled",) if args.quick else ("eager", "compiled")
        contenders = ("ours", "keras", "native", "copy")
    if args.execs:
        executions = tuple(e for e in executions if e in args.execs)
    rows = []
    for kind, shape_name, shape, layout, groups in cases(
        "quick" if args.quick else ("full" if args.full else "standard"),
        args.layers,
    ):
        if args.shapes and shape_name not in args.shapes:
            continue
        rng = np.random.RandomState(0)
        x = (2.0 + 3.0 * rng.randn(*shape)).astype("float32")
        up = rng.randn(*shape).astype("float32")
        axis = -1
        if layout == "cf":
            x, up = np.moveaxis(x, -1, 1).copy(), np.moveaxis(up, -1, 1).copy()
            axis = 1
        meta = {"kind": kind, "axis": axis, "groups": groups}
        for execution in executions:
            for mode in args.modes:
                if kind in NO_TRAIN and mode == "train":
                    continue  # same computation as infer for these layers
                runners, memory = {}, {}
                for name in contenders:
                    run = H.runner(name, mode, execution, x, up, meta)
                    if run is None:
                        continue
                    runners[name] = run
                minima = {}
                medians = H.time_interleaved(
                    runners,
                    args.rounds,
                    budget_s=args.cell_budget,
                    minima=minima,
                    clock=CLOCKS[args.clock],
                )
                times = minima if args.estimator == "min" else medians
                if mode == "grad" and not args.quick:
                    for name in ("ours", "native", "keras"):
                        run = runners.get(name)
                        if run is not None and hasattr(run, "memory"):
                            memory[name] = run.memory()
                row = {
                    "backend": H.BACKEND,
                    "layer": kind,
                    "shape": shape_name,
                    "dims": list(x.shape),
                    "layout": layout,
                    "exec": execution,
                    "mode": mode,
                    "ms": {k: 1e3 * v for k, v in times.items()},
                    "estimator": args.estimator,
                    "clock": args.clock,
                    "ms_median": {k: 1e3 * v for k, v in medians.items()},
                    "ms_min": {k: 1e3 * v for k, v in minima.items()},
                    "mem": memory,
                    "nbytes": int(x.nbytes),
                }
                rows.append(row)
                print(format_row(row), flush=True, file=sys.stderr)
    return rows


def _limit_threads(n):
    """At most `n` compute threads in this backend's kernels.

    On a machine shared with other work, a kernel split over every core
    waits at each barrier for its slowest thread: torch's `F.batch_norm` on
    32x32x32x64 measured 10 ms median with 2 threads on a loaded 2-core
    machine against 1.0 ms with one. With `--threads 1` the contenders
    still run side by side, so the ratios stay comparable, with far less
    scatter. Called before the backend is imported.
    """
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(n)
    os.environ["TF_NUM_INTEROP_THREADS"] = str(n)
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (
        f"{flags} --xla_cpu_multi_thread_eigen=false "
        f"intra_op_parallelism_threads={n}"
    ).strip()
    backend = os.environ.get("KERAS_BACKEND")
    if backend == "torch":
        import torch

        torch.set_num_threads(n)
        torch.set_num_interop_threads(n)
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)


# ---------------------------------------------------------------------------
# Table and plot
# ---------------------------------------------------------------------------
def ratios(row):
    ms = row["ms"]
    ours = ms["ours"]
    r = {
        "keras": ours / ms["keras"] if "keras" in ms else None,
        "native": ours / ms["native"] if "native" in ms else None,
        "ops": ms["ours_ops"] / ms["keras"]
        if "ours_ops" in ms and "keras" in ms
        else None,
        "ops_native": ms["ours_ops"] / ms["native"]
        if "ours_ops" in ms and "native" in ms
        else None,
    }
    # floor bytes / time over the copy bandwidth (2 tensor sizes / copy time)
    r["floor"] = (ms["copy"] * H_FLOOR[row["mode"]] / 2.0) / ours
    mem = row.get("mem") or {}
    r["mem"] = (
        mem["ours"] / mem["native"]
        if mem.get("ours") is not None and mem.get("native")
        else None
    )
    return r


H_FLOOR = {"infer": 2, "train": 3, "grad": 8}
HEADER = (
    f"{'backend':<10} {'layer':<4} {'shape':<7} {'lay':<3} {'exec':<8} "
    f"{'mode':<5} {'ours ms':>8} {'/keras':>7} {'/native':>8} {'floor':>6} "
    f"{'ops/keras':>9} {'mem':>5}"
)


def _fmt(v, spec="7.2f"):
    return (
        format(v, spec) if v is not None else "-".rjust(int(spec.split(".")[0]))
    )


def format_row(row):
    r = ratios(row)
    return (
        f"{row['backend']:<10} {row['layer']:<4} {row['shape']:<7} "
        f"{row['layout']:<3} {row['exec']:<8} {row['mode']:<5} "
        f"{row['ms']['ours']:8.2f} {_fmt(r['keras'])} {_fmt(r['native'], '8.2f')} "
        f"{100 * r['floor']:5.0f}% {_fmt(r['ops'], '9.2f')} {_fmt(r['mem'], '5.1f')}"
    )


def summary(rows, keras_target=1.0, native_target=1.25):
    lines = []
    for backend in sorted({r["backend"] for r in rows}):
        sub = [r for r in rows if r["backend"] == backend]
        rk = [ratios(r)["keras"] for r in sub if ratios(r)["keras"] is not None]
        rn = [
            ratios(r)["native"] for r in sub if ratios(r)["native"] is not None
        ]
        parts = []
        # A selection of layers may have no keras twin (FRN, LRN) or no
        # native kernel (LRN on JAX): say so rather than fail.
        for label, values, target in (
            ("ours/keras", rk, keras_target),
            ("ours/native", rn, native_target),
        ):
            if not values:
                parts.append(f"{label}: none")
                continue
            miss = sum(v > target for v in values)
            parts.append(
                f"{label} median {statistics.median(values):.2f} "
                f"(max {max(values):.2f}, {miss}/{len(values)} above {target})"
            )
        lines.append(f"{backend}: " + "; ".join(parts))
    return "\n".join(lines)


def median_table(rows):
    """Markdown: per backend, execution and layer, medians over the cells
    of the medium and larger shapes (both layouts, every mode)."""

    def med(values, fmt="{:.2f}"):
        values = [v for v in values if v is not None]
        return fmt.format(statistics.median(values)) if values else "-"

    lines = [
        "| backend | exec | layer | ours/keras | ours/native | floor "
        "| before: ops/keras | mem ours/native |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend in BACKENDS:
        for execution in ("eager", "compiled"):
            for layer in LAYERS:
                sub = [
                    ratios(r)
                    for r in rows
                    if r["backend"] == backend
                    and r["exec"] == execution
                    and r["layer"] == layer
                    and r["shape"] != "small"
                ]
                if not sub:
                    continue
                lines.append(
                    f"| {backend} | {execution} | {layer} "
                    f"| {med([r['keras'] for r in sub])} "
                    f"| {med([r['native'] for r in sub])} "
                    f"| {med([100 * r['floor'] for r in sub], '{:.0f}%')} "
                    f"| {med([r['ops'] for r in sub])} "
                    f"| {med([r['mem'] for r in sub])} |"
                )
    return "\n".join(lines)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
USER_EXECUTION = {"torch": "eager", "jax": "compiled", "tensorflow": "compiled"}


def _f2(v):
    return "-" if v is None else f"{v:.2f}"


def _load_rows(patterns):
    """Rows of every JSON file matching the glob `patterns`, in order."""
    import glob

    rows = []
    for pattern in patterns:
        paths = sorted(glob.glob(pattern)) or [pattern]
        for path in paths:
            with open(path) as f:
                rows += json.load(f)
    return rows


def _cell(row):
    return (
        row["backend"],
        row["exec"],
        row["layer"],
        row["shape"],
        row["layout"],
        row["mode"],
    )


def compare_table(
    before, after, keras_target=1.0, native_target=1.25, slower_by=1.10
):
    """Markdown: each cell measured in both runs, before and after.

    Columns: ours/keras and ours/native before and after (each run times
    them side by side, so Keras' layer and the native contender are the
    yardsticks across runs), and after over before of ours/keras (of
    ours/native where Keras has no such layer). Then which targets hold
    on the executions users run (compiled JAX and TensorFlow, eager torch);
    a cell counts as slower where after/before exceeds `slower_by` (single
    cells of identical programs scatter by about that much on a shared
    machine).
    """
    old = {_cell(r): ratios(r) for r in before}
    lines = [
        "| layer | backend | exec | shape | layout | mode "
        "| before ours/keras | after ours/keras | before ours/native "
        "| after ours/native | after/before |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {b: i for i, b in enumerate(BACKENDS)}
    misses, slower, native_misses, user_cells = [], [], [], 0
    for row in sorted(
        after,
        key=lambda r: (
            LAYERS.index(r["layer"]),
            order[r["backend"]],
            r["exec"],
            r["shape"],
            ("cl", "cf").index(r["layout"]),
            MODES.index(r["mode"]),
        ),
    ):
        new = ratios(row)
        prev = old.get(_cell(row), {})
        k0, k1 = prev.get("keras"), new["keras"]
        n0, n1 = prev.get("native"), new["native"]
        # Against Keras where it has the layer, else against the native
        # contender: the yardstick timed beside ours in each run.
        change = k1 / k0 if k0 and k1 else (n1 / n0 if n0 and n1 else None)
        lines.append(
            f"| {row['layer']} | {row['backend']} | {row['exec']} "
            f"| {row['shape']} | {row['layout']} | {row['mode']} "
            f"| {_f2(k0)} | {_f2(k1)} | {_f2(n0)} | {_f2(n1)} "
            f"| {_f2(change)} |"
        )
        if row["exec"] != USER_EXECUTION[row["backend"]]:
            continue
        user_cells += 1
        name = " ".join(str(v) for v in _cell(row))
        if k1 is not None and k1 > keras_target:
            misses.append(f"{name} ({k1:.2f})")
        if change is not None and change > slower_by:
            slower.append(f"{name} ({change:.2f})")
        if row["backend"] == "torch" and n1 is not None and n1 > native_target:
            native_misses.append(f"{name} ({n1:.2f})")
    medians = []
    for backend in BACKENDS:
        execution = USER_EXECUTION[backend]
        pairs = [
            (old[_cell(r)].get("keras"), ratios(r)["keras"])
            for r in after
            if r["backend"] == backend
            and r["exec"] == execution
            and _cell(r) in old
            and old[_cell(r)].get("keras")
            and ratios(r)["keras"]
        ]
        if pairs:
            medians.append(
                f"{backend} {execution} {statistics.median(p[0] for p in pairs):.2f}"
                f" -> {statistics.median(p[1] for p in pairs):.2f}"
            )
    lines += [
        "",
        "Median ours/keras over the cells with a Keras twin, before -> "
        "after: " + "; ".join(medians) + ".",
        "",
        f"Executions users run ({user_cells} cells): "
        f"ours/keras above {keras_target}: "
        + (", ".join(misses) if misses else "none")
        + "; "
        f"ratio more than {slower_by:.2f}x its before: "
        + (", ".join(slower) if slower else "none")
        + "; "
        f"torch ours/native above {native_target}: "
        + (", ".join(native_misses) if native_misses else "none")
        + ".",
    ]
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = [b for b in BACKENDS if any(r["backend"] == b for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=False)
    width = 0.8 / max(1, len(backends))
    for ax, key, target, title in (
        (axes[0], "keras", 1.0, "ours / keras.layers built-in"),
        (axes[1], "native", 1.25, "ours / native kernel"),
    ):
        for i, backend in enumerate(backends):
            values = []
            for layer in LAYERS:
                vals = [
                    ratios(r)[key]
                    for r in rows
                    if r["backend"] == backend
                    and r["layer"] == layer
                    and ratios(r)[key] is not None
                ]
                values.append(statistics.median(vals) if vals else float("nan"))
            xs = [
                j + (i - (len(backends) - 1) / 2) * width
                for j in range(len(LAYERS))
            ]
            ax.bar(xs, values, width, label=backend)
        ax.axhline(target, color="k", lw=0.8, ls="--")
        ax.set_xticks(range(len(LAYERS)), LAYERS)
        ax.set_title(title + " (median over shapes, modes)")
        ax.set_yscale("log")
        ax.set_ylabel("time ratio (lower is faster)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}", file=sys.stderr)


# ---------------------------------------------------------------------------
# Entry
# ---------------------------------------------------------------------------
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run (seconds)")
    p.add_argument("--full", action="store_true", help="every shape x layout")
    p.add_argument(
        "--all",
        action="store_true",
        help="every backend in its own process (the default)",
    )
    p.add_argument("--backends", nargs="+", default=list(BACKENDS))
    p.add_argument("--backend", help=argparse.SUPPRESS)  # child process
    p.add_argument("--layers", nargs="+", default=list(LAYERS))
    p.add_argument("--modes", nargs="+", default=list(MODES))
    p.add_argument(
        "--shapes",
        nargs="+",
        default=None,
        help="only these shape names (small, medium, large, seq, gn256)",
    )
    p.add_argument(
        "--execs",
        nargs="+",
        default=None,
        choices=("eager", "compiled"),
        help="only these executions (torch runs eager only)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="compute threads per backend (1 on a shared machine)",
    )
    p.add_argument(
        "--estimator",
        choices=("median", "min"),
        default="median",
        help="per-contender statistic the ratios use (both are "
        "saved): min on a heavily shared machine",
    )
    p.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="wall time, or this process's CPU time (leaves out "
        "other processes' turns on a shared machine; use with "
        "--threads 1)",
    )
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument(
        "--cell-budget",
        type=float,
        default=None,
        help="seconds of timing per cell before stopping early",
    )
    p.add_argument("--json", help="save the rows here")
    p.add_argument("--from-json", help="print/plot saved rows, run nothing")
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("BEFORE", "AFTER"),
        help="JSON files (glob patterns) of two runs: print, or "
        "with --markdown write, their cell-by-cell table; runs "
        "nothing",
    )
    p.add_argument("--plot", help="draw the ratio figure here")
    p.add_argument("--markdown", help="write the table of medians here")
    p.add_argument(
        "--timeout",
        type=float,
        default=900,
        help="seconds allowed per backend process",
    )
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 3 if args.quick else 9
    if args.cell_budget is None:
        args.cell_budget = 0.5 if args.quick else 1.5
    return args


def main(argv=None):
    args = parse(argv)
    if args.backend:  # child: one backend, rows as JSON on --json
        # The checkout's keras_norms, not whichever one is installed (an
        # editable install of another worktree would be measured instead).
        sys.path[:0] = [HERE, os.path.dirname(HERE)]
        rows = run_backend(args)
        with open(args.json, "w") as f:
            json.dump(rows, f)
        return 0
    if args.compare:
        table = compare_table(*(_load_rows([p]) for p in args.compare))
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(table + "\n")
        print(table)
        return 0
    if args.from_json:
        rows = _load_rows([args.from_json])
    else:
        rows = []
        passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
        passthrough = _strip(
            passthrough,
            (
                "--json",
                "--plot",
                "--backends",
                "--markdown",
                "--timeout",
                "--from-json",
            ),
        )
        for backend in args.backends:
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as t:
                out = t.name
            env = dict(
                os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3"
            )
            t0 = time.perf_counter()
            print(f"== {backend}", file=sys.stderr, flush=True)
            try:
                subprocess.run(
                    [
                        sys.executable,
                        os.path.abspath(__file__),
                        "--backend",
                        backend,
                        "--json",
                        out,
                    ]
                    + passthrough,
                    env=env,
                    check=True,
                    timeout=args.timeout,
                )
                with open(out) as f:
                    rows += json.load(f)
            except (
                subprocess.CalledProcessError,
                subprocess.TimeoutExpired,
            ) as e:
                print(f"{backend} failed: {e}", file=sys.stderr)
            finally:
                os.unlink(out)
            print(
                f"== {backend}: {time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    print(HEADER)
    for row in rows:
        print(format_row(row))
    print()
    print(summary(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=0)
    if args.plot:
        plot(rows, args.plot)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(median_table(rows) + "\n")
    return 0


def _strip(argv, flags_with_values):
    out, skip = [], False
    for a in argv:
        if skip:
            if a.startswith("--"):
                skip = False
            else:
                continue
        if a in flags_with_values:
            skip = True
            continue
        if a == "--all":
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
