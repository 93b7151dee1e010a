"""The report of how far moving statistics are from precise ones."""

import numpy as np

from keras_norms.precise._pass import to_numpy


def errors(layer, stats):
    """`(mean_shift, variance_log_ratio)` of the layer's moving statistics
    against the precise `stats`; `mean_shift` is `None` without a mean."""
    eps = float(getattr(layer, "epsilon", 0.0))
    variance = stats["moving_variance"]
    moving_var = to_numpy(layer.moving_variance).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(
            np.log((np.maximum(moving_var, 0) + eps) / (variance + eps))
        )
    log_ratio = float(np.nan_to_num(np.max(ratio), nan=np.inf))
    if "moving_mean" not in stats:
        return None, log_ratio
    moving_mean = to_numpy(layer.moving_mean).astype(np.float64)
    shift = np.abs(moving_mean - stats["moving_mean"]) / np.sqrt(
        np.maximum(variance, 0) + eps
    )
    return float(np.nan_to_num(np.max(shift), nan=np.inf)), log_ratio


def format_report(report, mean_threshold=0.1, variance_threshold=0.1):
    """The report of `batch_norm_statistics_report` as a text table.

    A layer without a moving mean (`mean_shift` `None`) shows `-` for it.
    """
    headers = ("Layer", "Mean shift", "Var. log ratio", "Stale")
    rows = [
        (
            name,
            "-" if r["mean_shift"] is None else f"{r['mean_shift']:.4f}",
            f"{r['variance_log_ratio']:.4f}",
            "yes" if r["stale"] else "no",
        )
        for name, r in report.items()
    ]
    widths = [
        max([len(headers[i])] + [len(row[i]) for row in rows])
        for i in range(len(headers))
    ]

    def line(cells, bar):
        parts = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ]
        return f"{bar} " + f" {bar} ".join(parts) + f" {bar}"

    def rule(left, mid, right, fill):
        return left + mid.join(fill * (w + 2) for w in widths) + right

    stale = sum(r["stale"] for r in report.values())
    out = [
        "BatchNormalization statistics vs precise (stale above: mean shift "
        f"{mean_threshold:g}, variance log ratio {variance_threshold:g})",
        rule("┏", "┳", "┓", "━"),
        line(headers, "┃"),
        rule("┡", "╇", "┩", "━"),
    ]
    out += [line(row, "│") for row in rows]
    out += [
        rule("└", "┴", "┘", "─"),
        f" Stale layers: {stale} of {len(report)}",
    ]
    return "\n".join(out)
