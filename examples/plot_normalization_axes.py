"""Which axes of an N x C x H x W tensor each normalization reduces over.

Draws the cube figure of the Group Normalization paper (Wu & He, 2018,
Fig. 2): one cube per normalization, N (batch) along one edge, C
(channels) along another and the spatial axes H, W flattened into the
third. The cells shaded in blue are normalized with one shared mean and
variance (one statistics "group"); a lighter tint shows the other cells
whose statistics are computed the same way.

    python examples/plot_normalization_axes.py                      # outputs/
    python examples/plot_normalization_axes.py --out docs/figures   # docs

Writes `normalization_axes.png` under `--out`. Pure matplotlib (Agg); no
Keras backend is needed.
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # noqa: E402

N, C, S = 6, 6, 4  # cells along batch, channels, flattened H*W

# For each norm: (title, subtitle, function (n, c) -> True if cell is in the
# highlighted statistics group). Every norm reduces over all of H*W; they
# differ in how much of N and C a single group spans.
NORMS = [
    ("Batch Norm", "per channel, over N, H, W", lambda n, c: c == 0),
    ("Layer Norm", "per sample, over C, H, W", lambda n, c: n == 0),
    (
        "Instance Norm",
        "per sample & channel, over H, W",
        lambda n, c: n == 0 and c == 0,
    ),
    (
        "Group Norm (G=2)",
        "per sample & group, over C/G, H, W",
        lambda n, c: n == 0 and c < C // 2,
    ),
]
BIN = (
    "Batch-Instance Norm",
    "learned mix rho*BN + (1-rho)*IN",
    lambda n, c: c == 0,
    lambda n, c: n == 0 and c == 0,
)
SN = ("Switchable Norm", "learned mix of IN, LN, BN moments", None, None)

BLUE = (0.25, 0.45, 0.85, 0.95)
PALE = (0.93, 0.94, 0.97, 1.0)
ORANGE = (0.95, 0.55, 0.15, 0.95)


def _cube_faces(x, y, z, dx=1.0, dy=1.0, dz=1.0):
    """The six faces of an axis-aligned box, as lists of 3D corners."""
    p = np.array(
        [
            [x, y, z],
            [x + dx, y, z],
            [x + dx, y + dy, z],
            [x, y + dy, z],
            [x, y, z + dz],
            [x + dx, y, z + dz],
            [x + dx, y + dy, z + dz],
            [x, y + dy, z + dz],
        ]
    )
    idx = [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [0, 1, 5, 4],
        [2, 3, 7, 6],
        [1, 2, 6, 5],
        [0, 3, 7, 4],
    ]
    return [p[i] for i in idx]


def draw_cube(ax, colour_of):
    """Draw the N x C x (H*W) cube; colour_of(n, c) -> RGBA face colour.

    Only the three visible outer faces are drawn, which is enough to read
    off which (n, c) columns share statistics, since every norm spans the
    whole H*W axis.
    """
    faces, colours = [], []
    for n in range(N):
        for c in range(C):
            for s in range(S):
                box = _cube_faces(c, n, s)
                # Only the outward faces of the visible surface: the top
                # (H*W end), the front (sample 0) and the right (last C).
                if s == S - 1:
                    faces.append(box[1])
                    colours.append(colour_of(n, c))
                if n == 0:
                    faces.append(box[2])
                    colours.append(colour_of(n, c))
                if c == C - 1:
                    faces.append(box[4])
                    colours.append(colour_of(n, c))
    collection = Poly3DCollection(
        faces,
        facecolors=colours,
        edgecolors=(0.2, 0.2, 0.2, 0.6),
        linewidths=0.4,
    )
    ax.add_collection3d(collection)
    ax.set_xlim(0, C)
    ax.set_ylim(0, N)
    ax.set_zlim(0, S)
    ax.set_box_aspect((C, N, S))
    ax.view_init(elev=22, azim=-58)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_zticks([])
    ax.set_xlabel("C", labelpad=-12, fontsize=11)
    ax.set_ylabel("N", labelpad=-12, fontsize=11)
    ax.set_zlabel("H, W", labelpad=-12, fontsize=11)
    ax.xaxis.pane.fill = ax.yaxis.pane.fill = ax.zaxis.pane.fill = False
    ax.grid(False)


def _highlight(group):
    return lambda n, c: BLUE if group(n, c) else PALE


def draw(path, with_learned=True):
    panels = [(t, s, _highlight(g)) for t, s, g in NORMS]
    if with_learned:
        # BIN: the BN group (blue) and the IN group (orange) it interpolates.
        def bin_colour(n, c):
            if BIN[3](n, c):
                return ORANGE
            return BLUE if BIN[2](n, c) else PALE

        # SN: IN (orange), LN (row of sample 0) and BN (column of channel
        # 0) groups, all mixed with learned softmax weights.
        def sn_colour(n, c):
            if n == 0 and c == 0:
                return ORANGE
            if n == 0:
                return (0.35, 0.7, 0.35, 0.95)
            if c == 0:
                return BLUE
            return PALE

        panels += [(BIN[0], BIN[1], bin_colour), (SN[0], SN[1], sn_colour)]
    cols = 3 if with_learned else 4
    rows = int(np.ceil(len(panels) / cols))
    fig = plt.figure(figsize=(3.2 * cols, 3.3 * rows))
    for i, (title, subtitle, colour_of) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1, projection="3d")
        draw_cube(ax, colour_of)
        ax.set_title(f"{title}\n{subtitle}", fontsize=10, pad=0)
    fig.suptitle(
        "Cells normalized with one shared mean and variance (blue); "
        "BIN/SN mix the coloured groups (orange: IN, green: LN, blue: BN)",
        fontsize=9,
        y=0.02,
        va="bottom",
    )
    fig.subplots_adjust(
        left=0.0, right=1.0, top=0.92, bottom=0.06, wspace=0.0, hspace=0.15
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs")
    parser.add_argument(
        "--no-learned", action="store_true", help="draw only BN, LN, IN and GN"
    )
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "normalization_axes.png")
    draw(path, with_learned=not args.no_learned)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
