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


# ------------------------------------------------------ step-size search
TRACE_SERIES = (  # column, label, colour, marker
    ("fa1", "forget FA@1 (target)", "tab:red", "o"),
    ("identity_acc1", "other identities acc@1", "tab:blue", "s"),
    ("test_acc1", "object zero-shot acc@1", "tab:green", "^"),
)


def search_trace_plot(trace_df: pd.DataFrame, info: dict, path, title: str | None = None) -> None:
    """One panel per searched layer: lambda (log x) against the validation
    forget accuracy FA@1 and the two utilities (other identities, objects),
    each probe numbered in search order. Dotted lines: the forget target and
    the utility floors (base accuracy minus its budget). The chosen
    (layer, lambda) has a gold frame, a gold vertical line and stars.

    ``trace_df`` is a method's ``search.parquet`` (SLUG: one row per probe
    with ``layer``, ``probe``, ``lam``, the metrics; a trace without a
    ``layer`` column, such as SSD's, is one panel); ``info`` its ``info.json``.
    Written atomically as a PNG.
    """
    import math

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from .layers import short_name

    df = trace_df.copy()
    p = info.get("params", {}) or {}
    used = p.get("forget_metric")
    if used and "forget_metric" in df.columns:  # SLUG's auto rule: the rule that decided
        df = df[df["forget_metric"] == used]
    has_layers = "layer" in df.columns
    method = str(info.get("method", "slug"))
    if has_layers:
        layers = list(info.get("layers_searched") or [])
        layers += [l for l in dict.fromkeys(df["layer"]) if l not in layers]
    else:
        layers = [method]
        df["layer"] = method
    if not layers:
        layers = [method]
    outcomes = {
        o.get("layer"): o
        for o in info.get("outcomes", [])
        if isinstance(o, dict) and o.get("forget_metric", used) == used
    }
    chosen_layer = info.get("layer", method if not has_layers else None)
    chosen_lam = info.get("lambda")
    base = info.get("base_val_metrics", {}) or {}
    budget = p.get("utility_budget", {}) or {}

    ncols = min(3, len(layers))
    nrows = math.ceil(len(layers) / ncols)
    fig = Figure(figsize=(max(4.4 * ncols, 9.0), 3.3 * nrows + 1.1), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(layers) :]:
        ax.set_visible(False)
    for ax, layer in zip(axes, layers):
        rows = df[df["layer"] == layer]
        rows = rows[pd.to_numeric(rows.get("lam"), errors="coerce") > 0] if len(rows) else rows
        name = short_name(layer) if has_layers else layer
        status = outcomes.get(layer, {}).get("status", "")
        chosen = layer == chosen_layer
        if len(rows):
            by_lam = rows.sort_values("lam")
            for col, label, color, marker in TRACE_SERIES:
                if col in by_lam:
                    ax.plot(by_lam["lam"], by_lam[col], color=color, marker=marker, ms=4, lw=1, label=label)
            if "probe" in rows:
                for _, r in rows.iterrows():
                    ax.annotate(
                        str(int(r["probe"])), (r["lam"], r["fa1"]), xytext=(3, 3),
                        textcoords="offset points", fontsize=6, color="tab:red",
                    )  # fmt: skip
            ax.set_xscale("log")
            _log_ticks(ax, by_lam["lam"].min(), by_lam["lam"].max())
        else:
            ax.text(0.5, 0.5, status or "no probes", ha="center", va="center", transform=ax.transAxes)
        if "forget_target" in p:
            ax.axhline(float(p["forget_target"]), color="tab:red", ls=":", lw=0.8)
        for col, _label, color, _m in TRACE_SERIES[1:]:
            if col in budget and col in base:
                ax.axhline(float(base[col]) - float(budget[col]), color=color, ls=":", lw=0.8)
        if chosen and chosen_lam is not None and len(rows):
            ax.axvline(float(chosen_lam), color="goldenrod", lw=1.5, alpha=0.8)
            pick = rows.iloc[(rows["lam"] - float(chosen_lam)).abs().argsort()[:1]]
            for col, _label, color, _m in TRACE_SERIES:
                if col in pick:
                    ax.scatter(pick["lam"], pick[col], marker="*", s=160, color="gold", edgecolor=color, zorder=5)
            for spine in ax.spines.values():
                spine.set_edgecolor("goldenrod")
                spine.set_linewidth(2.5)
        head = f"CHOSEN: {name}" if chosen else name
        ax.set_title(f"{head}\n{status}" if status else head, fontsize=9, fontweight="bold" if chosen else "normal")
        ax.set_ylim(-5, 105)
        ax.set_xlabel("step size λ (log)", fontsize=8)
        ax.set_ylabel("validation accuracy (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
    handles = [Line2D([], [], color=c, marker=m, label=l) for _col, l, c, m in TRACE_SERIES]
    handles += [
        Line2D([], [], color="0.3", ls=":", label="forget target / utility floor (base − budget)"),
        Line2D([], [], color="goldenrod", marker="*", ms=10, markerfacecolor="gold", label="chosen (layer, λ)"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    if title is None:
        target = info.get("target", {})
        target = target.get("id") or target.get("name") if isinstance(target, dict) else target
        lam = f"{float(chosen_lam):.4g}" if chosen_lam is not None else "?"
        rule = f", stop rule {used}" if used else ""
        title = f"{method} step-size search on {target}{rule}: {len(df)} probes; chosen {chosen_layer} at λ = {lam}"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.09 if nrows == 1 else 0.06, 1, 0.95))
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def _log_ticks(ax, lo: float, hi: float) -> None:
    """Readable ticks on a log x axis however narrow the range: 1-2-3-5-7
    steps within a decade or so, fewer over wider ranges, as plain numbers."""
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    decades = math.log10(hi / lo) if hi > lo > 0 else 0.0
    subs = (1, 2, 3, 5, 7) if decades <= 1.5 else (1, 3) if decades <= 3 else (1,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.4g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
