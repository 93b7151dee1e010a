"""What the runtime modules share: the file protocol, input and output order.

Imports NumPy and the standard library only (it runs in the runtime
programs' processes, beside one runtime).

**The files.** A parent process hands a runtime program its inputs, and
gets its outputs back, through files beside one path prefix `io`:

- `<io>_in.npz`: the model's inputs, one entry per flat input (`arr_0`,
  `arr_1`, ... in the model's order), numeric arrays only (never object
  arrays: the child loads them with `allow_pickle=False`);
- `<io>_inputs.json`: `{"names": [...], "structure": ...}`, the model's
  input names in its order and the structure of its call arguments, a
  list of arguments in nested lists and dicts whose leaves are indices
  into the flat inputs (see `describe_inputs`);
- `<io>_out.npz`: the outputs, in the model's order (`arr_0`, ...);
- `<io>_meta.json`: what the runtime says about the artifact (`version`:
  the runtime's version, `static_batch`: the artifact's static batch size
  or `None`, `input_names`: the artifact's input names, and per runtime
  more, e.g. `xla` for TensorFlow, `precision` for OpenVINO), and under
  `variants` the same for each variant of the runtime (e.g. OpenVINO's
  `"default"`: the plugin's own configuration), whose outputs are the
  entries `<variant>_0`, `<variant>_1`, ... of `<io>_out.npz`.

**Batches.** By default the inputs are run in one call, or in slices of
the artifact's static batch where it has one (`run_batches`). Given
`batches` (row counts summing to the rows of the inputs), each slice of
that many rows is run as one call, never sliced further: an artifact
whose static batch is not every one of them is not run at all (no
outputs; its meta says its `static_batch`), so that a caller checking
several batch sizes learns the artifact takes only one.

**The order of the flat inputs** is the order of `flatten`: lists and
tuples in order, dicts by sorted key (as `keras.tree.flatten`).

**A runtime module** (`onnx_runtime`, ...) has a function `load(path, *,
threads=None, batch=None, inputs=None, ...)` returning a `Runtime`, and
ends with `if __name__ == "__main__": _protocol.main(load)`.
"""

import argparse
import json
import sys

import numpy as np

# Where each file of the protocol lives, given the prefix `io`.
IN, INPUTS, OUT, META = "_in.npz", "_inputs.json", "_out.npz", "_meta.json"


# ----------------------------------------------------------------------
# Structures of inputs
# ----------------------------------------------------------------------
def flatten(nested):
    """The leaves of `nested` (lists, tuples, dicts by sorted key), in order.

    The order of `keras.tree.flatten` for these containers: the order of
    the flat inputs in the protocol.
    """
    if isinstance(nested, dict):
        return [leaf for k in sorted(nested) for leaf in flatten(nested[k])]
    if isinstance(nested, (list, tuple)):
        return [leaf for item in nested for leaf in flatten(item)]
    return [nested]


def describe_inputs(signature, name=lambda spec: getattr(spec, "name", None)):
    """`{"names", "structure"}` of a model's input signature (JSON-ready).

    Args:
        signature: The model's call arguments as a list (one entry per
            positional argument) of nested lists, tuples and dicts of
            input specs (what Keras' exporters read from a model).
        name: The name of a spec (default: its `name` attribute).

    Returns:
        A dict: `names`, the input names in flat order (`""` for an
        unnamed input); `paths`, each input's path in the structure of
        the first argument (a dict's keys, joined by `/`: what some
        exporters name the inputs instead); and `structure`, `signature`
        with each leaf replaced by its index in `flatten(signature)`
        (tuples as lists).
    """
    leaves = flatten(signature)

    def leaf_paths(node, prefix):  # in flat order, as `flatten`
        if isinstance(node, dict):
            return [
                p
                for k in sorted(node)
                for p in leaf_paths(node[k], prefix + [str(k)])
            ]
        if isinstance(node, (list, tuple)):
            return [
                p
                for i, v in enumerate(node)
                for p in leaf_paths(v, prefix + [str(i)])
            ]
        return ["/".join(prefix[1:])]  # without the argument's index

    counter = iter(range(len(leaves)))

    def indices(node):  # numbered in flat order, dicts kept in their order
        if isinstance(node, dict):
            numbered = {k: indices(node[k]) for k in sorted(node)}
            return {k: numbered[k] for k in node}
        if isinstance(node, (list, tuple)):
            return [indices(v) for v in node]
        return next(counter)

    return {
        "names": [name(leaf) or "" for leaf in leaves],
        "paths": leaf_paths(list(signature), []),
        "structure": indices(list(signature)),
    }


def pack(flat, structure):
    """`structure` (nested lists and dicts of indices) filled from `flat`."""
    if isinstance(structure, list):
        return [pack(flat, s) for s in structure]
    if isinstance(structure, dict):
        return {k: pack(flat, s) for k, s in structure.items()}
    return flat[structure]


def in_artifact_order(xs, model_names, artifact_names, model_paths=None):
    """The inputs `xs` (the model's order) in the artifact's order.

    By name where the artifact kept the model's input names, or their
    paths in the model's input structure (a dict's keys: OpenVINO names
    the inputs so); the order of an artifact's inputs need not be the
    model's. Else by position.

    Raises:
        ValueError: If the artifact takes another number of inputs.
    """
    artifact_names = list(artifact_names)
    if len(xs) != len(artifact_names):
        raise ValueError(
            f"The artifact takes {len(artifact_names)} input(s) "
            f"({', '.join(map(repr, artifact_names))}), the model "
            f"{len(xs)}. Received: {len(xs)} input(s)"
        )
    for names in (list(model_names or []), list(model_paths or [])):
        if len(set(names)) == len(names) and sorted(names) == sorted(
            artifact_names
        ):
            by_name = dict(zip(names, xs))
            return [by_name[n] for n in artifact_names]
    return list(xs)


def output_order(key):
    """Sort key of a named output: the number its digits spell, then the key.

    `output_0, output_1, ..., output_10` in that order (a runtime's dict of
    outputs need not keep the model's order).
    """
    digits = "".join(c for c in key if c.isdigit())
    return (int(digits) if digits else 0, key)


# ----------------------------------------------------------------------
# A loaded artifact
# ----------------------------------------------------------------------
class Runtime:
    """An artifact loaded in its runtime.

    Attributes:
        version: The runtime's version (a string).
        input_names: The artifact's input names, in its order.
        static_batch: The batch size the artifact is fixed to, or `None`.
        model_names: The model's input names (its order), or `None`.
        model_paths: Their paths in the model's input structure, or
            `None` (see `describe_inputs`).
    """

    def __init__(self, version, input_names, static_batch, inputs):
        self.version = str(version)
        self.input_names = list(input_names)
        self.static_batch = static_batch
        inputs = inputs or {}
        self.model_names = inputs.get("names")
        self.model_paths = inputs.get("paths")

    def run(self, xs):
        """The flat outputs (model order) on the flat inputs `xs`."""
        raise NotImplementedError

    def ordered(self, xs):
        """`xs` (the model's order) in the artifact's input order."""
        return in_artifact_order(
            xs, self.model_names, self.input_names, self.model_paths
        )

    def variants(self):
        """`{name: Runtime}`: other configurations of the runtime that run
        beside this one (default: none; OpenVINO's `"default"`)."""
        return {}

    def meta(self):
        """What `<io>_meta.json` records (JSON-ready)."""
        return {
            "version": self.version,
            "static_batch": self.static_batch,
            "input_names": self.input_names,
        }

    def __repr__(self):
        return (
            f"<{type(self).__name__} {self.version} inputs="
            f"{self.input_names} static_batch={self.static_batch}>"
        )


def check_options(threads, batch):
    """Raise a `ValueError` for a `threads` or `batch` that is not >= 1."""
    for name, value in (("threads", threads), ("batch", batch)):
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or value < 1
        ):
            raise ValueError(
                f"Argument `{name}` must be a positive integer or None. "
                f"Received: {name}={value!r}"
            )


def check_batch(batch, static_batch, runtime):
    """For runtimes that run any batch: `batch` must fit a static one."""
    if batch is not None and static_batch not in (None, batch):
        raise ValueError(
            f"The artifact has a static batch size of {static_batch}, and "
            f"{runtime} cannot change it. Received: batch={batch}"
        )


def check_batches(batches, rows):
    """`batches` as a list of ints, or a `ValueError` unless they are
    positive row counts summing to `rows`."""
    batches = [int(b) for b in batches]
    if sum(batches) != rows or min(batches, default=0) < 1:
        raise ValueError(
            "Argument `batches` must be positive row counts summing to "
            f"the {rows} rows of the inputs. Received: batches={batches}"
        )
    return batches


def takes_batches(runtime, batches):
    """Whether `runtime` runs each batch of `batches` rows as one call."""
    static = runtime.static_batch
    return static is None or all(b == static for b in batches)


def run_batches(runtime, xs, batches=None):
    """`runtime.run(xs)`, in slices of its static batch where it has one.

    Args:
        runtime: A `Runtime`.
        xs: The flat inputs (model order).
        batches: `None`, or row counts summing to the rows of `xs`: each
            slice of that many rows is run as one call, and the outputs
            are concatenated (the caller checks `takes_batches` first).

    Raises:
        ValueError: If the batch is not a multiple of the static batch,
            or `batches` do not add up to the rows of `xs`.
    """
    n = len(xs[0])
    if batches is not None:
        check_batches(batches, n)
        ends = np.cumsum([0] + list(batches))
        parts = [
            runtime.run([x[a:b] for x in xs])
            for a, b in zip(ends[:-1], ends[1:])
        ]
        return [np.concatenate(outputs) for outputs in zip(*parts)]
    static = runtime.static_batch
    if static is None or static == n:
        return runtime.run(xs)
    if n % static:
        raise ValueError(
            f"The artifact has a static batch size of {static}; the inputs "
            f"have {n} samples, not a multiple of it. Received: batch of {n}"
        )
    parts = [
        runtime.run([x[i : i + static] for x in xs])
        for i in range(0, n, static)
    ]
    return [np.concatenate(outputs) for outputs in zip(*parts)]


# ----------------------------------------------------------------------
# The files
# ----------------------------------------------------------------------
def write_inputs(io, xs, inputs=None):
    """Write the flat inputs `xs` and the model's `inputs` description.

    Args:
        io: The path prefix of the protocol's files.
        xs: The flat inputs, in the model's order (array-likes).
        inputs: `describe_inputs` of the model, or `None` (each input one
            positional argument, unnamed).

    Raises:
        TypeError: If an input is not numeric (an object array: e.g. a
            dict or a ragged list passed as one input).
    """
    arrays = [np.asarray(x) for x in xs]
    for i, x in enumerate(arrays):
        if x.dtype == object:
            raise TypeError(
                f"Input {i} is not a numeric array (dtype object): pass "
                "the model's inputs flat, one array each (flatten a dict "
                f"or list of inputs first). Received: {type(xs[i]).__name__}"
            )
    if inputs is None:
        inputs = {
            "names": [""] * len(arrays),
            "structure": list(range(len(arrays))),
        }
    np.savez(io + IN, *arrays)
    with open(io + INPUTS, "w") as f:
        json.dump(inputs, f)


def read_inputs(io):
    """`(xs, inputs)` as `write_inputs` wrote them."""
    with np.load(io + IN, allow_pickle=False) as data:
        xs = [data[f"arr_{i}"] for i in range(len(data.files))]
    with open(io + INPUTS) as f:
        inputs = json.load(f)
    return xs, inputs


def saveable(output):
    """An output as an array `np.savez` keeps: bfloat16 (ml_dtypes, which
    it would store as raw bytes) as float32, which holds it exactly."""
    output = np.asarray(output)
    if output.dtype.name == "bfloat16":
        return output.astype(np.float32)
    return output


def write_outputs(io, outputs, meta, variants=None):
    """Write the flat outputs (model order) and the runtime's `meta`.

    `variants`: `{name: (outputs, meta)}` of the runtime's variants.
    """
    arrays = {f"arr_{i}": saveable(o) for i, o in enumerate(outputs)}
    meta = dict(meta)
    if variants:
        meta["variants"] = {}
        for name, (variant_outputs, variant_meta) in variants.items():
            meta["variants"][name] = variant_meta
            for i, o in enumerate(variant_outputs):
                arrays[f"{name}_{i}"] = saveable(o)
    np.savez(io + OUT, **arrays)
    with open(io + META, "w") as f:
        json.dump(meta, f)


def read_outputs(io):
    """`(outputs, meta)` as `write_outputs` wrote them.

    Each variant's outputs are in `meta["variants"][name]["outputs"]`.
    """
    with open(io + META) as f:
        meta = json.load(f)
    with np.load(io + OUT, allow_pickle=False) as data:

        def entries(prefix):
            count = sum(f.startswith(prefix + "_") for f in data.files)
            return [data[f"{prefix}_{i}"] for i in range(count)]

        outputs = entries("arr")
        for name, variant in meta.get("variants", {}).items():
            variant["outputs"] = entries(name)
    return outputs, meta


def main(load, argv=None):
    """A runtime module's program: load the artifact, run the inputs.

    `python -m keras_norms._runtimes.<module> ARTIFACT IO [--threads N]
    [--batch N] [--batches JSON] [--options JSON] [--report-modules]`
    (launched by `keras_norms._launch`, which keeps
    `keras_norms/__init__` out): reads `<IO>_in.npz` and
    `<IO>_inputs.json`, runs them (in slices of a static batch, or each
    of `--batches`, a JSON list of row counts, as one call: see
    "Batches" above), also in each of the runtime's `variants`, writes
    `<IO>_out.npz` and `<IO>_meta.json`. `--options` is a JSON object of
    the module's own `load` options; `--report-modules` adds `modules`
    (every imported module's name) to the meta.
    """
    parser = argparse.ArgumentParser(prog=sys.argv[0])
    parser.add_argument("artifact")
    parser.add_argument("io")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--batches", type=json.loads, default=None)
    parser.add_argument("--options", type=json.loads, default={})
    parser.add_argument("--report-modules", action="store_true")
    args = parser.parse_args(argv)
    xs, inputs = read_inputs(args.io)
    runtime = load(
        args.artifact,
        threads=args.threads,
        batch=args.batch,
        inputs=inputs,
        **args.options,
    )
    outputs, variants = [], {}
    if args.batches is None or takes_batches(runtime, args.batches):
        outputs = run_batches(runtime, xs, args.batches)
        variants = {
            name: (run_batches(variant, xs, args.batches), variant.meta())
            for name, variant in runtime.variants().items()
        }
    meta = runtime.meta()
    if args.report_modules:
        meta["modules"] = sorted(sys.modules)
    write_outputs(args.io, outputs, meta, variants)
