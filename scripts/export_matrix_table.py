"""Print the export matrix (layer x backend x format) as a Markdown table.

Reads `build/export_matrix_<backend>.json`, written by
`pytest tests/test_deploy.py --slow -k matrix` under each backend, so the
docs' table comes from a run. A cell reads "ok" (verified in its runtime),
"refused" (kn.deploy.export says why and what to use instead; "refused; ok
with batch_size=4": refused with a dynamic batch, verified with a static
one), "FAILS"
(the exporter or runtime failed: see the JSON for the error), "-" (its
runtime was not installed) or blank (not run).

    python scripts/export_matrix_table.py [build]
"""

import glob
import json
import os
import sys

FORMATS = ("tf_saved_model", "onnx", "litert", "openvino", "torch")
BACKENDS = ("tensorflow", "jax", "torch")
MARK = {"verified": "ok", "refused": "refused", "fails": "FAILS", "skipped": "-"}


def main(directory="build"):
    cells = {}
    for path in sorted(glob.glob(os.path.join(directory, "export_matrix_*.json"))):
        with open(path) as f:
            cells.update(json.load(f))
    layers = sorted({key.split("|")[0] for key in cells})
    columns = [(b, f) for b in BACKENDS for f in FORMATS]
    print("| layer | " + " | ".join(f"{b} {f}" for b, f in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for layer in layers:
        row = []
        for b, f in columns:
            key = f"{layer}|{b}|{f}"
            mark = MARK.get(cells.get(key, {}).get("result"), "")
            static = cells.get(f"{key}[batch_size=4]")
            if static:  # refused with a dynamic batch; a static one tried
                mark += f"; {MARK[static['result']]} with batch_size=4"
            row.append(mark)
        print(f"| {layer} | " + " | ".join(row) + " |")
    failures = {k: v["why"] for k, v in cells.items() if v["result"] == "fails"}
    if failures:
        print("\nFailures:\n")
        for key, why in sorted(failures.items()):
            print(f"- {key.replace('|', ' / ')}: {why}")


if __name__ == "__main__":
    main(*sys.argv[1:])
