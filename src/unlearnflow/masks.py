"""SalUn saliency masks: the top fraction f of all weights by |forget gradient|.

The rule (SalUn, ICLR 2024, section "Mask" of REFERENCE.md):

- saliency is |g| of the forget gradient, one value per weight;
- the threshold is GLOBAL: all weights of all eligible parameters are ranked
  together, never layer by layer; for a fraction f in (0, 1] exactly
  ``k = round(f * N)`` weights are kept, N being the number of eligible
  weights (Python's ``round``: halves go to the even integer);
- ties are broken deliberately: every weight with |g| strictly above the k-th
  largest value (the threshold) is kept; weights with |g| equal to the
  threshold are taken in a fixed order -- parameter name ascending (Python
  string order), then flat row-major index ascending -- until exactly k are
  kept. The realised fraction is therefore k / N, within half an element of
  f, and the same gradient always gives the same mask;
- weights with |g| == 0 are the smallest saliencies, so they are kept only
  when k exceeds the number of non-zero weights (then in the same order);
- parameters whose name contains one of the ``exclude`` substrings (default
  ``logit_scale``) get all-False masks and do not count in N;
- f = 1 keeps every eligible weight; f = 0 (or any f with k = 0) is an error,
  since a mask that keeps nothing would make the method a no-op.

All fractions come from ONE in-place sort of one fp32 copy of the eligible
|g| values: the sort gives each fraction's threshold, and the masks are then
built parameter by parameter. Because the thresholds and the tie order are
shared, the masks are nested: mask(f1) is a subset of mask(f2) for f1 <= f2.

Mask files are safetensors with one bool tensor per parameter of the
gradient file (excluded ones included, all False) and metadata
``format = unlearnflow.mask/1``.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

from .io import InputFileError, UnlearnflowError, load_tensors, save_tensors

FORMAT = "unlearnflow.mask/1"
DEFAULT_EXCLUDE = ("logit_scale",)
# what a fraction is a fraction of: "all" eligible weights (the SalUn
# reference's global top-k), or the "nonzero" saliencies only (a weight no
# forget sample gives a gradient cannot be salient: on the tiny CLIP the token
# embedding is ~91% of all weights and mostly such rows, so under "all" every
# fraction from 0.1 up keeps the same weights and SalUn equals GA+FT)
RANK_AMONG = ("all", "nonzero")
TIE_RULE = (
    "keep every weight with |g| > threshold, then weights with |g| == threshold in order of "
    "parameter name ascending, flat row-major index ascending, until exactly kept = round(fraction * total)"
)


def out_key(fraction: float) -> str:
    """The output name of a fraction's mask in the rule: 0.1 -> 'salun_0.1'."""
    return f"salun_{float(fraction)}"


def _is_excluded(name: str, exclude: Iterable[str]) -> bool:
    return any(s in name for s in exclude)


def _check_fractions(fractions) -> list[float]:
    if isinstance(fractions, (int, float)) or not fractions:
        raise UnlearnflowError(f"fractions must be a non-empty list of numbers in (0, 1], got {fractions!r}")
    out = []
    for f in fractions:
        if isinstance(f, bool) or not isinstance(f, (int, float)):
            raise UnlearnflowError(f"mask fraction {f!r} is not a number")
        f = float(f)
        if not (0.0 < f <= 1.0):  # also rejects NaN
            why = " (a mask that keeps nothing changes nothing)" if f == 0 else ""
            raise UnlearnflowError(f"mask fraction {f!r} must be in (0, 1]{why}")
        if f in out:
            raise UnlearnflowError(f"mask fraction {f!r} given twice")
        out.append(f)
    return out


class _Ranking:
    """The sorted eligible |g| values (one fp32 copy) and the fixed parameter order."""

    def __init__(self, grads: dict[str, torch.Tensor], exclude: Iterable[str], rank_among: str = "all"):
        if rank_among not in RANK_AMONG:
            raise UnlearnflowError(f"masks.rank_among: {rank_among!r}, expected one of {list(RANK_AMONG)}")
        self.rank_among = rank_among
        self.exclude = tuple(exclude)
        self.names = sorted(grads)  # the tie order's first key
        self.eligible = [n for n in self.names if not _is_excluded(n, self.exclude)]
        for n in self.names:
            if not torch.is_floating_point(grads[n]):
                raise UnlearnflowError(f"gradient of {n!r} has dtype {grads[n].dtype}, not floating point")
        self.total = sum(grads[n].numel() for n in self.eligible)
        if self.total == 0:
            raise UnlearnflowError(
                f"no weights to rank: {len(self.names)} parameters, all excluded by {list(self.exclude)} or empty"
            )
        # Fill one preallocated buffer (a list of per-parameter abs copies
        # then torch.cat would hold two full copies at the peak).
        flat = torch.empty(self.total, dtype=torch.float32)
        o = 0
        for n in self.eligible:
            g = grads[n].detach()
            part = flat[o : o + g.numel()]
            part.copy_(g.reshape(-1))
            if torch.isnan(part).any():
                raise UnlearnflowError(f"gradient of {n!r} contains NaN: saliency is undefined")
            part.abs_()
            o += g.numel()
        # numpy sorts in place: no second fp32 copy and no int64 index array
        self.sorted = flat.numpy()
        self.sorted.sort()
        self.nonzero = self.total - int(np.searchsorted(self.sorted, 0.0, side="right"))

    def plan(self, fraction: float) -> dict:
        """Threshold and counts for one fraction, from the sorted values alone."""
        n = self.total
        # the count the fraction is of: every eligible weight (the reference),
        # or only those with a non-zero saliency
        base = n if self.rank_among == "all" else self.nonzero
        k = round(fraction * base)
        if k == 0:
            raise UnlearnflowError(
                f"mask fraction {fraction!r} of {base} weights ({self.rank_among}) keeps "
                f"round({fraction!r} * {base}) = 0: nothing to unlearn"
            )
        t = self.sorted[n - k]  # the k-th largest |g|
        lo = int(np.searchsorted(self.sorted, t, side="left"))
        hi = int(np.searchsorted(self.sorted, t, side="right"))
        above = n - hi
        return {
            "fraction": fraction,
            "kept": k,
            "total": n,
            "rank_among": self.rank_among,
            "ranked": base,
            "realised_fraction": k / base,
            "threshold": float(t),
            "above_threshold": above,
            "at_threshold": hi - lo,
            "ties_taken": k - above,
            "nonzero": self.nonzero,
            "excluded": [p for p in self.names if p not in self.eligible],
        }

    def masks(self, grads: dict[str, torch.Tensor], plans: list[dict]) -> list[dict[str, torch.Tensor]]:
        """The masks of several fractions, built parameter by parameter in tie order."""
        out: list[dict[str, torch.Tensor]] = [{} for _ in plans]
        ties_left = [p["ties_taken"] for p in plans]
        eligible = set(self.eligible)
        for n in self.names:
            g = grads[n].detach()
            if n not in eligible:
                for m in out:
                    m[n] = torch.zeros(g.shape, dtype=torch.bool)
                continue
            a = g.float().abs()  # the same fp32 values that were sorted
            for i, p in enumerate(plans):
                t = torch.tensor(p["threshold"], dtype=torch.float32)
                m = a > t
                if ties_left[i] > 0:
                    eq = (a == t).reshape(-1)
                    take = eq & (eq.cumsum(0) <= ties_left[i])  # earliest flat indices first
                    ties_left[i] -= int(take.sum())
                    m |= take.view(m.shape)
                out[i][n] = m
        for p, m, left in zip(plans, out, ties_left):
            kept = sum(int(v.sum()) for v in m.values())
            if kept != p["kept"] or left != 0:  # cannot happen unless the sort and the masks disagree
                raise UnlearnflowError(f"internal error: mask for {p['fraction']} keeps {kept}, expected {p['kept']}")
        return out


def iter_topk_masks(
    grads: dict[str, torch.Tensor],
    fractions: list[float],
    *,
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
    rank_among: str = "all",
) -> Iterator[tuple[float, dict[str, torch.Tensor], dict]]:
    """Like :func:`global_topk_masks`, one fraction at a time (one mask in memory)."""
    fractions = _check_fractions(fractions)
    ranking = _Ranking(grads, exclude, rank_among)
    plans = [ranking.plan(f) for f in fractions]  # fail on k = 0 before any work
    for p in plans:
        yield p["fraction"], ranking.masks(grads, [p])[0], p


def global_topk_masks(
    grads: dict[str, torch.Tensor],
    fractions: list[float],
    *,
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
    rank_among: str = "all",
) -> dict[float, tuple[dict[str, torch.Tensor], dict]]:
    """Masks keeping the global top ``round(f * N)`` weights by |g|, for each f.

    Returns ``{f: (masks, info)}`` with ``masks[name]`` a bool tensor shaped
    like ``grads[name]`` and ``info`` the threshold and counts (kept, total,
    realised_fraction, threshold, above_threshold, at_threshold, ties_taken,
    nonzero, excluded). See the module docstring for the tie rule.
    """
    fractions = _check_fractions(fractions)
    ranking = _Ranking(grads, exclude, rank_among)
    plans = [ranking.plan(f) for f in fractions]
    masks = ranking.masks(grads, plans)
    return {p["fraction"]: (m, p) for p, m in zip(plans, masks)}


def mask_metadata(info: dict, source, exclude: Iterable[str] = DEFAULT_EXCLUDE, extra: dict | None = None) -> dict:
    """The file metadata of one fraction's mask (all strings)."""
    meta = {
        "format": FORMAT,
        "fraction": repr(float(info["fraction"])),
        "realised_fraction": repr(float(info["realised_fraction"])),
        "kept": str(info["kept"]),
        "total": str(info["total"]),
        "rank_among": str(info.get("rank_among", "all")),
        "ranked": str(info.get("ranked", info["total"])),
        "threshold": repr(float(info["threshold"])),
        "nonzero": str(info["nonzero"]),
        "ties_taken": str(info["ties_taken"]),
        "source": str(source),
        "exclude": ",".join(exclude),
        "excluded": ",".join(info["excluded"]),
        "tie_rule": TIE_RULE,
    }
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def save_mask(path, masks: dict[str, torch.Tensor], metadata: dict) -> None:
    """Write bool masks and string metadata atomically (format is set here)."""
    for n, m in masks.items():
        if m.dtype != torch.bool:
            raise UnlearnflowError(f"mask of {n!r} has dtype {m.dtype}, not bool")
    save_tensors(path, masks, {**metadata, "format": FORMAT})


def load_mask(path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a mask file; any problem is an InputFileError naming the file."""
    masks, meta = load_tensors(path, FORMAT, what="a SalUn mask")
    bad = [k for k, v in masks.items() if v.dtype != torch.bool]
    if bad:
        raise InputFileError(path, f"mask tensors {bad[:5]} are not torch.bool")
    if "kept" in meta:
        kept = sum(int(v.sum()) for v in masks.values())
        if str(kept) != meta["kept"]:
            raise InputFileError(path, f"keeps {kept} weights but its metadata says {meta['kept']}")
    return masks, meta
