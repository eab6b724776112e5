"""SLUG layer selection: per-parameter importance, gradient alignment, Pareto fronts.

A "layer" is one named parameter tensor θ_l of an open_clip model. From the
forget-set gradient g_f = ∇θ_l L_forget and the retain-set gradient
g_r = ∇θ_l L_retain (both stored as +∇L, fp32, one tensor per parameter):

    importance(l) = ‖g_f‖₂ / ‖θ_l‖₂                 (Frobenius norms)
    alignment(l)  = ⟨g_f, g_r⟩ / (‖g_f‖₂ ‖g_r‖₂)     (cosine of the flattened
                                                     tensors, signed)

Norms and dot products are accumulated in float64, chunk by chunk.
Undefined values are NaN, never ±inf: a parameter with ‖θ‖ = 0 has NaN
importance, a zero forget or retain gradient has NaN alignment; a NaN makes
the parameter a non-candidate.

Candidates (see :func:`is_candidate`): not a shared scalar (``logit_scale``,
``logit_bias``), no excluded substring in the name (default: bias,
logit_scale, position, embedding, as in the reference code), optionally no
LayerNorm, optionally only tensors with ndim >= 2, and finite metrics.

Pareto front, per tower (visual / text) over its candidates: point i is
dominated iff some j has alignment_j < alignment_i AND importance_j >
importance_i (both strict); the non-dominated points form the front. The
paper's equation uses the signed alignment, the reference code (CSIPlab/slug)
its absolute value |cos|, and the paper plots alignment on a log axis, which
needs positive values; ``use_abs_alignment`` picks (default: |cos|, the
reference; docs/fidelity.md item 2 has the effect of signed alignment). The
signed alignment is always stored in the table, whichever criterion drew the
front.
"""

from __future__ import annotations

import logging
import math
import os
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .io import InputFileError, UnlearnflowError, atomic_path

log = logging.getLogger(__name__)

DEFAULT_EXCLUDE: tuple[str, ...] = ("bias", "logit_scale", "position", "embedding")

# Scalars of the CLIP loss itself, in neither tower: never a candidate, even
# with an empty exclude list (editing them changes every logit at once).
SHARED_PARAMS = frozenset({"logit_scale", "logit_bias"})

TOWERS = ("visual", "text")
_TOWER_ORDER = {"visual": 0, "text": 1, "shared": 2}

COLUMNS = [
    "name", "tower", "shape", "numel", "param_norm", "grad_forget_norm",
    "grad_retain_norm", "importance", "alignment", "abs_alignment",
    "candidate", "pareto", "front_rank",
]  # fmt: skip

# Elements per float64 chunk: bounds the extra memory to ~32 MiB per tensor
# whatever the layer's size (ViT-H-14's token embedding is 50M elements).
_CHUNK = 1 << 22


# --------------------------------------------------------------------------
# metrics on tensors


def _flat(x):
    import torch

    return torch.as_tensor(x).reshape(-1)


def _sumsq(x) -> float:
    import torch

    flat = _flat(x)
    total = 0.0
    for s in range(0, flat.numel(), _CHUNK):
        c = flat[s : s + _CHUNK].to(torch.float64)
        total += float(torch.dot(c, c))
    return total


def _dot(a, b) -> float:
    import torch

    fa, fb = _flat(a), _flat(b)
    if fa.numel() != fb.numel():
        raise ValueError(f"tensors of different sizes: {fa.numel()} vs {fb.numel()}")
    total = 0.0
    for s in range(0, fa.numel(), _CHUNK):
        total += float(torch.dot(fa[s : s + _CHUNK].to(torch.float64), fb[s : s + _CHUNK].to(torch.float64)))
    return total


def norm(x) -> float:
    """Frobenius norm of a tensor (torch or numpy), accumulated in float64."""
    return math.sqrt(_sumsq(x))


def _ratio(grad_norm: float, param_norm: float) -> float:
    return grad_norm / param_norm if param_norm > 0 else math.nan


def _cosine(dot: float, norm_a: float, norm_b: float) -> float:
    if norm_a == 0 or norm_b == 0:
        return math.nan
    # rounding can push |cos| a hair past 1 for parallel tensors
    return min(1.0, max(-1.0, dot / (norm_a * norm_b)))


def importance(grad, theta) -> float:
    """‖grad‖₂ / ‖theta‖₂ (Frobenius, float64); NaN when ‖theta‖ = 0."""
    return _ratio(norm(grad), norm(theta))


def alignment(g_forget, g_retain) -> float:
    """Signed cosine between the flattened gradients; NaN if either is zero."""
    return _cosine(_dot(g_forget, g_retain), norm(g_forget), norm(g_retain))


# --------------------------------------------------------------------------
# names


def tower(name: str) -> str:
    """'visual' for open_clip's vision tower (``visual.*``), 'shared' for the
    loss scalars (logit_scale, logit_bias), else 'text' (``transformer.*``,
    token_embedding, positional_embedding, ln_final, text_projection)."""
    if name in SHARED_PARAMS:
        return "shared"
    if name.startswith("visual."):
        return "visual"
    return "text"


_LN_COMPONENT = re.compile(r"^ln(_|\d|$)|norm", re.IGNORECASE)


def is_layernorm(name: str) -> bool:
    """True for LayerNorm (or other norm) parameters: a dotted component that
    starts with ``ln_`` / ``ln<digit>`` / is ``ln`` (open_clip: ln_1, ln_2,
    ln_pre, ln_post, ln_final) or contains ``norm`` (timm / HF: norm1,
    layer_norm, final_layer_norm). Matching per component, not on the whole
    string, so that e.g. a component ``kiln_`` would not count."""
    return any(_LN_COMPONENT.search(part) for part in name.split("."))


def is_candidate(
    name: str,
    exclude: Iterable[str] | None = DEFAULT_EXCLUDE,
    include_layernorm: bool = True,
    *,
    ndim: int | None = None,
    matrices_only: bool = False,
) -> bool:
    """Whether a parameter may be chosen for the SLUG edit, by name (and ndim).

    Rules, all of which must pass:
      1. not a shared loss scalar (``logit_scale``, ``logit_bias``);
      2. no string of ``exclude`` is a (case-sensitive) substring of the name,
         as the reference does (``None`` means the default list; ``()`` none);
      3. if ``include_layernorm`` is False, not a LayerNorm (:func:`is_layernorm`);
      4. if ``matrices_only``, ``ndim >= 2`` (``ndim`` is then required).
    Finite metrics are required on top of these by :func:`analyse`.
    """
    if exclude is None:
        exclude = DEFAULT_EXCLUDE
    if isinstance(exclude, str):  # a bare string would be split into letters
        exclude = (exclude,)
    if tower(name) == "shared":
        return False
    if any(s and s in name for s in exclude):
        return False
    if not include_layernorm and is_layernorm(name):
        return False
    if matrices_only:
        if ndim is None:
            raise ValueError("is_candidate: matrices_only=True needs ndim")
        if ndim < 2:
            return False
    return True


def short_name(name: str) -> str:
    """A compact label: ``visual.transformer.resblocks.3.attn.in_proj_weight``
    -> ``v.rb3.attn.in_proj_w``; ``transformer.resblocks.0.mlp.c_fc.weight``
    -> ``t.rb0.mlp.c_fc``."""
    t = tower(name)
    s = name[len("visual.") :] if t == "visual" else name
    s = re.sub(r"(^|\.)transformer\.resblocks\.(\d+)", r"\1rb\2", s)
    s = re.sub(r"\.weight$", "", s)
    s = re.sub(r"_weight$", "_w", s)
    s = re.sub(r"(\.|_)bias$", r"\1b", s)
    return s if t == "shared" else f"{t[0]}.{s}"


def _natural_key(name: str):
    # resblocks.10 after resblocks.9
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


# --------------------------------------------------------------------------
# Pareto front


def pareto_front(importance: Sequence[float], alignment: Sequence[float]) -> np.ndarray:
    """Boolean mask of the non-dominated points.

    Point i is dominated iff some j has ``alignment[j] < alignment[i]`` and
    ``importance[j] > importance[i]``, both strict. So identical points are
    all on the front, and equal alignment with higher importance does not
    dominate. Points with a NaN coordinate are never on the front and never
    dominate. Exact, O(n log n): sort by alignment; a point is dominated iff
    the highest importance among strictly smaller alignments exceeds its own.
    """
    imp = np.asarray(importance, dtype=np.float64).reshape(-1)
    al = np.asarray(alignment, dtype=np.float64).reshape(-1)
    if imp.shape != al.shape:
        raise ValueError(f"pareto_front: {imp.size} importances but {al.size} alignments")
    front = np.zeros(imp.shape, dtype=bool)
    idx = np.flatnonzero(~(np.isnan(imp) | np.isnan(al)))
    order = idx[np.argsort(al[idx], kind="stable")]
    best_before = -np.inf  # max importance over strictly smaller alignments
    i = 0
    while i < order.size:
        j = i + 1
        while j < order.size and al[order[j]] == al[order[i]]:
            j += 1
        group = order[i:j]  # equal alignment: they cannot dominate each other
        front[group] = ~(best_before > imp[group])
        best_before = max(best_before, float(imp[group].max()))
        i = j
    return front


# --------------------------------------------------------------------------
# files


def _open(stack: ExitStack, path: Path):
    from safetensors import safe_open

    if not path.exists():
        raise InputFileError(path, "file not found")
    try:
        return stack.enter_context(safe_open(str(path), framework="pt"))
    except Exception as exc:  # safetensors raises its own error types
        raise InputFileError(path, f"not a readable safetensors file ({exc})") from exc


def _shapes(f) -> dict[str, tuple[int, ...]]:
    return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _list(names: list[str]) -> str:
    return f"{names[:5]}{' ...' if len(names) > 5 else ''} ({len(names)})"


def _check_same(ref_path: Path, ref: dict, path: Path, other: dict, *, allow_extra: bool = False) -> None:
    """Same names and shapes in ``ref`` and ``other``; with ``allow_extra``,
    ``other`` may hold more names (a weights file beside gradients that were
    restricted to some parameters, or that also stores buffers)."""
    missing = sorted(set(ref) - set(other), key=_natural_key)
    extra = [] if allow_extra else sorted(set(other) - set(ref), key=_natural_key)
    if missing or extra:
        raise UnlearnflowError(
            f"parameter names differ between {ref_path} and {path}: "
            f"only in the first: {_list(missing)}, only in the second: {_list(extra)}"
        )
    diff = [k for k in sorted(ref, key=_natural_key) if ref[k] != other[k]]
    if diff:
        k = diff[0]
        raise UnlearnflowError(
            f"parameter shapes differ between {ref_path} and {path}: "
            f"{k} is {list(ref[k])} vs {list(other[k])}"
            + (f" (and {len(diff) - 1} more: {diff[1:4]})" if len(diff) > 1 else "")
        )


def _check_set(path: Path, f, expected: str) -> None:
    meta = f.metadata() or {}
    got = meta.get("set")
    if got is None or got == expected:
        return
    hint = " (forget and retain gradients swapped?)" if got in ("forget", "retain") else ""
    raise InputFileError(path, f"gradient metadata says set={got!r}, expected {expected!r}{hint}")


def _shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def analyse(
    grad_forget_path: os.PathLike | str,
    grad_retain_path: os.PathLike | str,
    weights_path: os.PathLike | str,
    *,
    use_abs_alignment: bool = True,
    exclude: Iterable[str] | None = DEFAULT_EXCLUDE,
    include_layernorm: bool = True,
    matrices_only: bool = False,
):
    """One row per parameter of the gradient files (columns :data:`COLUMNS`),
    by tower then name.

    The forget and retain files must hold the same names and shapes; the
    weights file must hold every one of them with the same shape, and may
    hold more (gradients computed for some parameters only; buffers).

    Reads one parameter at a time from each file (three tensors of one layer
    in memory, never three models). ``pareto`` and ``front_rank`` are per
    tower over the candidates, with ``alignment`` or ``abs_alignment`` per
    ``use_abs_alignment``; ``front_rank`` is 0 for the front's most important
    layer, -1 off the front. Raises UnlearnflowError on differing names or
    shapes (as above), a swapped ``set`` metadata, non-finite values, an all-zero
    forget or retain gradient, or no candidate at all.
    """
    import pandas as pd

    exclude = DEFAULT_EXCLUDE if exclude is None else tuple([exclude] if isinstance(exclude, str) else exclude)
    paths = [Path(grad_forget_path), Path(grad_retain_path), Path(weights_path)]
    rows = []
    with ExitStack() as stack:
        ff, fr, fw = (_open(stack, p) for p in paths)
        _check_set(paths[0], ff, "forget")
        _check_set(paths[1], fr, "retain")
        shapes = [_shapes(f) for f in (ff, fr, fw)]
        if not shapes[0]:
            raise InputFileError(paths[0], "no tensors")
        _check_same(paths[0], shapes[0], paths[1], shapes[1])
        _check_same(paths[0], shapes[0], paths[2], shapes[2], allow_extra=True)
        for path, f in zip(paths[:2], (ff, fr)):
            if (f.metadata() or {}).get("keep", "all") != "all":
                # gradients kept for candidates only: by the same filter as this analysis
                want = [
                    n
                    for n, shape in shapes[2].items()
                    if n not in shapes[0]
                    and is_candidate(n, exclude, include_layernorm, ndim=len(shape), matrices_only=matrices_only)
                ]
                if want:
                    raise InputFileError(
                        path,
                        f"holds candidate layers only (gradients.keep: candidates) but lacks {_list(want)}, "
                        "candidates under this analysis's filter: compute the gradients with the same "
                        "layers config (or gradients.keep: all)",
                    )
        if len(shapes[2]) > len(shapes[0]):
            log.info("%d tensors of %s have no gradient and are not analysed", len(shapes[2]) - len(shapes[0]), paths[2])
        # visual, then text, then shared; natural order inside (resblocks.10 after .9)
        order = sorted(shapes[0], key=lambda n: (_TOWER_ORDER[tower(n)], _natural_key(n)))
        for name in order:
            gf, gr, w = ff.get_tensor(name), fr.get_tensor(name), fw.get_tensor(name)
            sf, sr, sw = _sumsq(gf), _sumsq(gr), _sumsq(w)
            dot = _dot(gf, gr)
            for path, value in zip(paths, (sf, sr, sw)):
                if not math.isfinite(value):
                    raise InputFileError(path, f"{name} has non-finite values")
            nf, nr, nw = math.sqrt(sf), math.sqrt(sr), math.sqrt(sw)
            shape = shapes[0][name]
            rows.append(
                {
                    "name": name,
                    "tower": tower(name),
                    "shape": _shape_str(shape),
                    "numel": int(np.prod(shape, dtype=np.int64)),
                    "param_norm": nw,
                    "grad_forget_norm": nf,
                    "grad_retain_norm": nr,
                    "importance": _ratio(nf, nw),
                    "alignment": _cosine(dot, nf, nr),
                    "ndim": len(shape),
                }
            )
            del gf, gr, w
    df = pd.DataFrame(rows)
    # A missing forget/retain tar used to give an all-zero gradient silently.
    for path, col in ((paths[0], "grad_forget_norm"), (paths[1], "grad_retain_norm")):
        if (df[col] == 0).all():
            raise InputFileError(path, "gradient is zero for every parameter (empty forget/retain set?)")
    df["abs_alignment"] = df["alignment"].abs()
    by_name = np.array(
        [
            is_candidate(n, exclude, include_layernorm, ndim=d, matrices_only=matrices_only)
            for n, d in zip(df["name"], df["ndim"])
        ],
        dtype=bool,
    )
    finite = np.isfinite(df["importance"].to_numpy()) & np.isfinite(df["alignment"].to_numpy())
    dropped = df["name"][by_name & ~finite].tolist()
    if dropped:
        log.warning("%d parameter(s) left out for undefined importance/alignment: %s", len(dropped), dropped[:5])
    df["candidate"] = by_name & finite
    if not df["candidate"].any():
        raise UnlearnflowError(
            f"no candidate layers in {paths[2]} (exclude={list(exclude)}, "
            f"include_layernorm={include_layernorm}, matrices_only={matrices_only})"
        )
    df["pareto"] = False
    df["front_rank"] = -1
    x_col = "abs_alignment" if use_abs_alignment else "alignment"
    for t in TOWERS:
        sel = df.index[(df["tower"] == t) & df["candidate"]]
        if len(sel) == 0:
            log.warning("no candidate layers in the %s tower", t)
            continue
        sub = df.loc[sel]
        on = pareto_front(sub["importance"].to_numpy(), sub[x_col].to_numpy())
        front = sub[on].sort_values(["importance", x_col, "name"], ascending=[False, True, True], kind="stable")
        df.loc[front.index, "pareto"] = True
        df.loc[front.index, "front_rank"] = np.arange(len(front))
    df["pareto"] = df["pareto"].astype(bool)
    df["front_rank"] = df["front_rank"].astype(np.int64)
    return df[COLUMNS].reset_index(drop=True)


# --------------------------------------------------------------------------
# plot


def pareto_plot(df, path: os.PathLike | str, title: str | None = None, *, use_abs_alignment: bool | None = None) -> None:
    """Log-log scatter of importance (y) vs |alignment| (x), one panel per tower.

    A log axis cannot show negative values, so x is |alignment| and the
    negatively aligned layers get their own marker (said in the legend).
    Candidates are grey; front layers are red and labelled. Points with a
    zero coordinate cannot be placed and are counted in the panel instead.
    Written atomically as a 150-dpi PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    # Figure + Agg canvas directly: no pyplot global state, no display needed
    fig = Figure(figsize=(12, 5.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(TOWERS))
    for ax, t in zip(axes, TOWERS):
        sub = df[(df["tower"] == t) & df["candidate"]]
        x = sub["alignment"].abs().to_numpy(dtype=float)
        y = sub["importance"].to_numpy(dtype=float)
        neg = sub["alignment"].to_numpy(dtype=float) < 0
        front = sub["pareto"].to_numpy(dtype=bool)
        ok = (x > 0) & (y > 0)
        for is_front, color, size, z in ((False, "0.6", 18, 2), (True, "tab:red", 40, 3)):
            for is_neg, marker in ((False, "o"), (True, "v")):
                m = ok & (front == is_front) & (neg == is_neg)
                if m.any():
                    ax.scatter(x[m], y[m], c=color, s=size, marker=marker, zorder=z, edgecolors="none")
        if ok.any():
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.autoscale_view()
        # Front layers often crowd one corner: the k-th by importance gets its
        # label 11k points lower than its marker, so that labels (ordered like
        # their markers) never overlap; on the right half they go leftwards.
        labelled = np.flatnonzero(front & ok)
        labelled = labelled[np.argsort(sub["front_rank"].to_numpy()[labelled], kind="stable")]
        to_axes = ax.transData + ax.transAxes.inverted()
        for k, i in enumerate(labelled):
            right = to_axes.transform((x[i], y[i]))[0] > 0.5
            ax.annotate(
                short_name(sub["name"].iloc[i]), (x[i], y[i]),
                xytext=(-10 if right else 10, 4 - 11 * k), textcoords="offset points",
                ha="right" if right else "left", va="center", fontsize=6, zorder=4,
                arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "tab:red"},
            )  # fmt: skip
        # counts go in the title: any corner of the panel may hold points
        note = f"{t} tower: {len(sub)} candidates, {int(front.sum())} on the front"
        if (~ok).any():
            note += f"\n({int((~ok).sum())} with a zero value not shown)"
        ax.set_title(note, fontsize=10)
        ax.set_xlabel("|alignment| = |cos(∇forget, ∇retain)|")
        ax.set_ylabel("importance = ‖∇forget‖ / ‖θ‖")
        ax.grid(True, which="both", alpha=0.2)
    crit = "" if use_abs_alignment is None else (" (front by |alignment|)" if use_abs_alignment else " (front by signed alignment)")
    handles = [
        Line2D([], [], ls="", marker="o", color="0.6", label="candidate, alignment ≥ 0"),
        Line2D([], [], ls="", marker="v", color="0.6", label="candidate, alignment < 0 (plotted at |alignment|)"),
        Line2D([], [], ls="", marker="o", color="tab:red", label="Pareto front" + crit),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title or "SLUG layer selection: importance vs gradient alignment")
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=150)
