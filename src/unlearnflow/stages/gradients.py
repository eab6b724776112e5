"""One function per rule of workflow/rules/gradients.smk: I/O here, algorithms
in :mod:`unlearnflow.gradients`, :mod:`unlearnflow.layers` and
:mod:`unlearnflow.masks`."""

from __future__ import annotations

import math
from pathlib import Path

from ..io import InputFileError, UnlearnflowError


def clip_gradients(inp: dict, out: dict, params: dict) -> None:
    """Rule ``clip_gradients``: one set's gradient file. ``candidates`` (the
    layer filter) is None when ``keep`` is ``all``."""
    from ..gradients import compute_set_gradients

    meta = compute_set_gradients(
        Path(inp["config"]).parent,
        inp["tar"],
        out["grads"],
        which=params["set"],
        loss=params["loss"],
        batch_size=int(params["batch_size"]),
        device=params.get("device", "auto"),
        amp=bool(params.get("amp", False)),
        threads=params.get("threads"),
        keep=params.get("keep", "all"),
        candidate_filter=params.get("candidates"),
    )
    keys = ("set", "loss", "samples", "batches", "mean_loss", "grad_norm", "seconds", "keep", "left_out")
    print({k: meta[k] for k in keys if k in meta})


def layer_analysis(inp: dict, out: dict, params: dict) -> None:
    """Rule ``layer_analysis``: inputs grad_forget, grad_retain, weights;
    outputs table (parquet), plot (png); params use_abs_alignment, exclude,
    include_layernorm, matrices_only."""
    from ..io import write_parquet
    from ..layers import DEFAULT_EXCLUDE, TOWERS, analyse, pareto_plot, short_name

    use_abs = bool(params.get("use_abs_alignment", True))  # the reference |cos|
    exclude = params.get("exclude")
    exclude = DEFAULT_EXCLUDE if exclude is None else tuple(exclude)
    df = analyse(
        inp["grad_forget"],
        inp["grad_retain"],
        inp["weights"],
        use_abs_alignment=use_abs,
        exclude=exclude,
        include_layernorm=bool(params.get("include_layernorm", True)),
        matrices_only=bool(params.get("matrices_only", False)),
    )
    write_parquet(out["table"], df)
    pareto_plot(df, out["plot"], title=params.get("title"), use_abs_alignment=use_abs)
    print(f"{len(df)} parameters, {int(df['candidate'].sum())} candidates; front by {'|alignment|' if use_abs else 'alignment'}:")
    for t in TOWERS:
        front = df[df["pareto"] & (df["tower"] == t)].sort_values("front_rank")
        layers = ", ".join(f"{short_name(r.name)} (imp {r.importance:.3g}, cos {r.alignment:+.3f})" for r in front.itertuples())
        print(f"  {t}: {layers or '(none)'}")


def salun_masks(inp: dict, out: dict, params: dict) -> None:
    """Rule ``salun_masks``: one mask file per fraction from a forget gradient file."""
    from ..gradients import load_gradients
    from ..masks import DEFAULT_EXCLUDE, _check_fractions, iter_topk_masks, mask_metadata, out_key, save_mask

    src = inp["grad_forget"]
    fractions = _check_fractions(params.get("fractions"))
    exclude = tuple(params.get("exclude", DEFAULT_EXCLUDE))
    rank_among = params["rank_among"]
    expected = {out_key(f) for f in fractions}
    if set(out) != expected:
        raise UnlearnflowError(
            f"salun_masks: outputs {sorted(out)} do not match fractions {fractions}: "
            f"expected exactly {sorted(expected)} (missing {sorted(expected - set(out))}, "
            f"extra {sorted(set(out) - expected)})"
        )
    grads, gmeta = load_gradients(src)
    if gmeta.get("keep", "all") != "all":
        raise InputFileError(
            src,
            f"holds the gradients of SLUG's candidate layers only (gradients.keep: {gmeta['keep']}); "
            "SalUn's global mask ranks every weight of the model: set gradients.keep: all",
        )
    if gmeta.get("set") != "forget":
        raise InputFileError(src, f"gradient set is {gmeta.get('set')!r}; SalUn masks need the forget gradient")
    extra = {k: gmeta[k] for k in ("loss", "model_fingerprint", "samples") if k in gmeta}
    for f, masks, info in iter_topk_masks(grads, fractions, exclude=exclude, rank_among=rank_among):
        save_mask(out[out_key(f)], masks, mask_metadata(info, src, exclude, extra))
        pct = 100.0 * info["realised_fraction"]
        print(
            f"salun mask f={f} of {info['ranked']} {rank_among} weights: kept {info['kept']}/{info['total']} ({pct:.4f}%), "
            f"threshold |g|={info['threshold']:.6g}, ties taken {info['ties_taken']} -> {out[out_key(f)]}"
        )
        if math.isinf(info["threshold"]):
            print(f"warning: threshold is inf for f={f}: the gradient has infinite entries")
