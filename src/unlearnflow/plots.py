"""Figures for the report: the forget/utility trade-off of the CLIP methods.

(The Pareto plot of layers lives with the layer analysis, in layers.py.)
"""

from __future__ import annotations

import pandas as pd

from .io import atomic_path

MARKERS = "osD^v<>pPhX*"


def tradeoff_plot(table: pd.DataFrame, path, title: str = "CLIP unlearning: forget vs keep") -> None:
    """Forget accuracy (x) against object test accuracy (y): one colour per
    method, one marker per target; the ideal corner is top left."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = table[table["target"] != "mean"]
    methods = list(dict.fromkeys(rows["method"]))
    targets = list(dict.fromkeys(rows["target"]))
    fig = Figure(figsize=(6.4, 4.8), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for _, r in rows.iterrows():
        ax.scatter(
            r["fa1"],
            r["test_acc1"],
            color=colors[r["method"]],
            marker=MARKERS[targets.index(r["target"]) % len(MARKERS)],
            s=46,
            edgecolor="black",
            linewidth=0.4,
        )
    for m in methods:
        ax.scatter([], [], color=colors[m], marker="o", label=m)
    for i, t in enumerate(targets):
        ax.scatter([], [], color="white", edgecolor="black", marker=MARKERS[i % len(MARKERS)], label=t)
    ax.set_xlabel("forget accuracy FA@1 on the target (%)  (lower is better)")
    ax.set_ylabel("object zero-shot accuracy (%)  (higher is better)")
    ax.set_xlim(-5, 105)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def tradeoff_stage(inp: dict, out: dict, params: dict) -> None:
    table = pd.read_csv(inp["table"])
    tradeoff_plot(table, out["png"], params.get("title", "CLIP unlearning: forget vs keep"))
    print(f"wrote {out['png']}")
