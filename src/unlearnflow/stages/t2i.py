"""One function per rule of workflow/rules/t2i.smk: I/O here, algorithms in
:mod:`unlearnflow.models.diffusion`, :mod:`unlearnflow.metrics.judge`,
:mod:`unlearnflow.methods` (``t2i``, ``t2i_slug``, ``t2i_salun``),
:mod:`unlearnflow.generate`, :mod:`unlearnflow.metrics.t2i_eval` and
:mod:`unlearnflow.tables`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..io import InputFileError, UnlearnflowError, atomic_path, read_json, write_json

# the evaluation sets, in the rules' input names: {set}_{split}, {set}_classes
EVAL_SETS = ("identities", "objects", "styles")


def _eval_sets(inp: dict, split: str = "test") -> dict:
    """{identities|objects|styles: {tar, classes}} from the rule's inputs."""
    return {s: {"tar": inp[f"{s}_{split}"], "classes": inp[f"{s}_classes"]} for s in EVAL_SETS if f"{s}_{split}" in inp}


# ------------------------------------------------------------ models
def pretrain_t2i(inp: dict, out: dict, params: dict) -> None:
    """Rule ``pretrain_t2i``: the tiny text-to-image model of the default."""
    from ..data.select import Matcher
    from ..models.diffusion import TINY_UNET, train_tiny_t2i

    tr = params["train"]
    info = train_tiny_t2i(
        inp["shards"],
        Path(inp["clip_config"]).parent,
        Path(out["model"]).parent,
        unet_cfg={**TINY_UNET, **(params.get("unet_cfg") or {})},
        steps=int(tr["steps"]),
        batch_size=int(tr["batch_size"]),
        lr=float(tr["lr"]),
        warmup_steps=int(tr["warmup_steps"]),
        cond_dropout=float(tr["cond_dropout"]),
        seed=int(params["seed"]),
        device=params.get("device", "auto"),
        threads=params.get("threads"),
        oversample=tr.get("oversample"),
        concepts=params.get("concepts"),
        matcher=lambda names: Matcher(names[0], aliases=list(names[1:])),
    )
    print(json.dumps(info["train"]))


def export_t2i(inp: dict, out: dict, params: dict) -> None:
    """Rule ``export_t2i``: a diffusers pipeline by id or folder."""
    from ..models.diffusion import export_pretrained

    extra = {"source_stamp": params.get("source_stamp"), "source_files": len(inp.get("source") or [])}
    info = export_pretrained(params["pretrained"], Path(out["model"]).parent, cache_dir=params.get("cache_dir"), dtype=params.get("dtype", "fp32"), extra=extra)
    print(f"exported {info['pretrained']} ({info['pipeline_class']})")


# ------------------------------------------------------------ the judge
def train_judge(inp: dict, out: dict, params: dict) -> None:
    """Rule ``train_judge``: render the judge stream, train, score held out."""
    import torch

    from ..io import save_tensors
    from ..metrics.judge import (
        TRAIN_DEFAULTS, Judge, _check_classes, _net_predictor, heldout_accuracy, render_training_set, train_tiny_judge,
    )  # fmt: skip
    from ..models.clip import resolve_device

    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    given = dict(params.get("train") or {})
    p = {**TRAIN_DEFAULTS, **given, "per_class": {**TRAIN_DEFAULTS["per_class"], **(given.get("per_class") or {})}}
    device = resolve_device(params.get("device", "auto"))
    t0 = time.time()
    x, y, classes = render_training_set(params["synthetic"], p["per_class"])
    eval_sets = _eval_sets(inp)
    _check_classes(classes, eval_sets)
    render_s = time.time() - t0
    net, trace = train_tiny_judge(x, y, classes, p, int(params["seed"]), device=device)
    info = {
        "name": params["name"],
        "kind": "train",
        "arch": f"timm ResNet-10 (BasicBlock x 4, width {p['width']})",
        "classes": classes,
        "train": {**p, **trace, "images": int(len(x)), "seed": int(params["seed"]), "render_seconds": round(render_s, 1)},
        "parameters": int(sum(q.numel() for q in net.parameters())),
    }
    fn = _net_predictor(net)
    judge = Judge(params["name"], "train", classes, lambda images, d: fn(images.to(device), d), info)
    info["heldout"] = heldout_accuracy(judge, eval_sets)
    info["seconds"] = round(time.time() - t0, 1)
    low = {d: v["accuracy"] for d, v in info["heldout"].items() if v["accuracy"] < float(params.get("min_accuracy", 0))}
    if low:
        raise UnlearnflowError(
            f"judge {params['name']!r}: held-out accuracy {low} below t2i.judge.min_accuracy "
            f"{params['min_accuracy']}; a judge that misreads real renders cannot score generations "
            "(raise t2i.judge.train.epochs or per_class)"
        )
    save_tensors(out["weights"], {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, {"format": "judge", "judge": params["name"]})
    write_json(out["info"], info)
    print(json.dumps({"heldout": info["heldout"], "seconds": info["seconds"]}))


def import_judge(inp: dict, out: dict, params: dict) -> None:
    """Rule ``import_judge``: check the user's classifiers (kind checkpoint)
    or the CLIP (kind clip) against the evaluation sets and score them."""
    import torch

    from ..io import sha256_file
    from ..metrics.judge import DOMAINS, EVAL_SET_OF, KINDS, _check_classes, checkpoint_judge, clip_judge, heldout_accuracy
    from ..models.clip import load_clip, resolve_device

    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    device = resolve_device(params.get("device", "auto"))
    eval_sets = _eval_sets(inp)
    kind = params["kind"]
    t0 = time.time()
    if kind == "checkpoint":
        heads = {}
        for d, spec in (params.get("heads") or {}).items():
            if d not in DOMAINS:
                raise UnlearnflowError(f"t2i.judge.heads: {d!r} is not a domain; known: {DOMAINS}")
            missing = [k for k in ("arch", "checkpoint", "classes") if not spec.get(k)]
            if missing:
                raise UnlearnflowError(f"t2i.judge.heads.{d}: {missing} missing")
            heads[d] = {**spec, "sha256": sha256_file(spec["checkpoint"])}
        if not heads:
            raise UnlearnflowError("t2i.judge.kind checkpoint needs t2i.judge.heads (a classifier per domain)")
        judge = checkpoint_judge(params["name"], heads, device)
        info = {"name": params["name"], "kind": kind, "heads": heads, "classes": judge.classes}
    elif kind == "clip":
        bundle = load_clip(Path(inp["clip_config"]).parent, device=device)
        classes = {d: read_json(eval_sets[s]["classes"])["classes"] for d, s in EVAL_SET_OF.items() if s in eval_sets}
        judge = clip_judge(bundle, classes)
        info = {"name": judge.name, "kind": kind, "classes": classes, "clip": str(Path(inp["clip_config"]).parent)}
    else:
        raise UnlearnflowError(f"import_judge: kind {kind!r} is trained by train_judge or unknown; known: {KINDS}")
    _check_classes(judge.classes, eval_sets)
    info["heldout"] = heldout_accuracy(judge, eval_sets)
    info["seconds"] = round(time.time() - t0, 1)
    write_json(out["info"], info)
    print(json.dumps({"heldout": info["heldout"]}))


# ------------------------------------------------------------ unlearning
def t2i_salun_masks(inp: dict, out: dict, params: dict) -> None:
    """Rule ``t2i_salun_masks``: one UNet mask file per fraction."""
    import torch

    from ..masks import global_topk_masks, mask_metadata, save_mask
    from ..methods.t2i_salun import unet_forget_gradients
    from ..models.clip import resolve_device
    from ..models.diffusion import load_t2i

    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    bundle = load_t2i(Path(inp["model"]).parent, device=resolve_device(params.get("device", "auto")))
    t0 = time.time()
    guidance, clip_norm = float(params["guidance"]), params["clip_norm"]
    grads, batches = unet_forget_gradients(
        bundle, inp["forget"], batch_size=int(params["batch_size"]), seed=int(params["seed"]),
        guidance=guidance, clip_norm=None if clip_norm is None else float(clip_norm),
    )  # fmt: skip
    if batches == 0:
        raise UnlearnflowError(f"{inp['forget']}: the forget set is empty")
    grads = {f"unet.{n}": g for n, g in grads.items()}
    masks = global_topk_masks(grads, list(params["fractions"]), exclude=())
    for fraction, (m, info) in masks.items():
        key = f"mask_{fraction:g}"
        save_mask(out[key], m, mask_metadata(info, inp["forget"], exclude=(), extra={
            "model": "t2i unet", "batches": batches, "guidance": guidance, "clip_norm": clip_norm,
            "loss": f"denoising loss of the guided prediction (w = {guidance:g}), summed over batches"
                    + ("" if clip_norm is None else f", each clipped to norm {clip_norm:g}")}))  # fmt: skip
    print(f"{len(masks)} UNet masks from {batches} batches in {time.time() - t0:.1f} s")


def _load_t2i(inp: dict, device):
    from ..models.diffusion import load_t2i

    bundle = load_t2i(Path(inp["model"]).parent, device=device)
    return bundle, bundle.info.get("fingerprint", "")


def _t2i_context(bundle, inp: dict, params: dict):
    from ..methods.t2i import T2IContext
    from .family import context_fields

    return T2IContext(
        bundle=bundle,
        concepts=params["concepts"],
        sampling={"guidance": float(params["guidance"])},
        clip_dir=Path(inp["clip_config"]).parent if inp.get("clip_config") else None,
        val_sets=_eval_sets(inp, "val"),
        judge=Path(inp["judge"]) if inp.get("judge") else None,
        **context_fields(inp, params),
    )


def unlearn_t2i(inp: dict, out: dict, params: dict) -> None:
    """Rule ``unlearn_t2i``: one method on one target from the base model;
    the delta in the naming the method declares (``info["naming"]``)."""
    from .family import Family, run_unlearning

    naming = lambda result: {"family": "t2i", "naming": result.info.get("naming", "components")}  # noqa: E731
    run_unlearning(Family("t2i", _load_t2i, _t2i_context, delta_meta=naming), inp, out, params)


# ------------------------------------------------------------ generation and scoring
def generate_t2i(inp: dict, out: dict, params: dict) -> None:
    """Rule ``generate_t2i``: the prompt sets of one target, from the base
    model or an unlearned one (base + delta)."""
    import pandas as pd
    import torch

    from ..generate import generate_set, prompt_sets
    from ..io import write_parquet
    from ..models.clip import resolve_device
    from ..models.diffusion import load_t2i, sampling_options

    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    # recorded with every picture, so the table can say how they were drawn
    how = {k: v for k, v in sampling_options(params["sampling"]).items() if k != "batch_size"}
    model_dir = Path(inp["model"]).parent
    bundle = load_t2i(model_dir, device=resolve_device(params.get("device", "auto")), delta=inp.get("delta"))
    sets = prompt_sets(params["target"], params["concepts"], seeds=list(params["sampling"]["seeds"]))
    t0 = time.time()
    rows = []
    for name, table in sets.items():
        folder = Path(out[f"{name}_dir"])
        done = generate_set(bundle, table, folder, params["sampling"], grid_path=out[f"{name}_grid"])
        rows.append(done.assign(set=name, dir=str(folder), **how))
    write_parquet(out["prompts"], pd.concat(rows, ignore_index=True))
    print(f"generated {sum(len(r) for r in rows)} images in {time.time() - t0:.1f} s")


def _feature_net(params: dict, inp: dict, device):
    """The feature network of FID / KID / IS / CLIP score (``feature_net``)."""
    from ..metrics import images as im

    spec = params.get("feature_net") or {"kind": "clip"}
    kind = spec.get("kind", "clip")
    if kind == "clip":
        return im.feature_net("clip", clip_dir=Path(inp["clip_config"]).parent, device=device)
    return im.feature_net(kind, arch=spec.get("arch"), pretrained=spec.get("pretrained"), device=device)


SAMPLING_COLUMNS = ("sampler", "steps", "guidance")


def sampling_of(prompts, path) -> dict:
    """How a prompts table's pictures were drawn (generate_t2i's columns):
    one sampler, step count and guidance for the whole table, and its seeds."""
    missing = [c for c in SAMPLING_COLUMNS if c not in prompts.columns]
    if missing:
        raise InputFileError(path, f"no {missing} columns (written before the sampler was recorded); rerun generate_t2i")
    how = {}
    for col in SAMPLING_COLUMNS:
        values = sorted(set(prompts[col]))
        if len(values) != 1:
            raise InputFileError(path, f"pictures drawn with several {col} values {values}")
        how[col] = values[0].item() if hasattr(values[0], "item") else values[0]
    return {**how, "seeds": sorted({int(s) for s in prompts["seed"]})}


def sampling_caption(records: list[dict]) -> str:
    """The sampler, steps, guidance and seeds every record's pictures share;
    records drawn differently cannot share one table."""
    ways = {json.dumps(r["sampling"], sort_keys=True) for r in records}
    if len(ways) != 1:
        raise UnlearnflowError(f"t2i table: its records were generated in different ways {sorted(ways)}; rerun generate_t2i")
    how = json.loads(ways.pop())
    name = {"ddim": "DDIM (deterministic)", "ddpm": "DDPM (ancestral)"}.get(how["sampler"], how["sampler"])
    seeds = how["seeds"]
    listed = ", ".join(map(str, seeds)) if len(seeds) <= 8 else f"{seeds[0]}, ..., {seeds[-1]}"
    return f"pictures by {name}, {how['steps']} steps, guidance {how['guidance']:g}, seeds {listed} ({len(seeds)} per prompt)"


def evaluate_t2i(inp: dict, out: dict, params: dict) -> None:
    """Rule ``evaluate_t2i``: one flat record per (target, method)."""
    import torch

    from .. import provenance
    from ..io import read_parquet, write_parquet
    from ..metrics.judge import load_judge
    from ..metrics.t2i_eval import evaluate_generations
    from ..models.clip import load_clip, resolve_device

    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    device = resolve_device(params.get("device", "auto"))
    clip_bundle = load_clip(Path(inp["clip_config"]).parent, device=device)
    judge = load_judge(inp["judge"], device=device, clip_bundle=clip_bundle)
    net = _feature_net(params, inp, device)
    prompts = read_parquet(inp["prompts"])
    record, preds = evaluate_generations(prompts, params["target"], judge, net, _eval_sets(inp), clip_bundle=clip_bundle)
    how = sampling_of(prompts, inp["prompts"])
    record.update(target=params["target"]["id"], method=params["method"], sampling=how)
    if inp.get("info"):
        info = read_json(inp["info"])
        record["method_seconds"] = info.get("seconds")
        record["search"] = info.get("status")  # the method's own search verdict (SLUG's)
    if inp.get("delta"):
        record["storage_mb"] = Path(inp["delta"]).stat().st_size / 2**20
    model_info = read_json(inp["model"])
    prov = provenance.evaluation_record(
        model_fingerprint=model_info.get("fingerprint", ""),
        delta=inp.get("delta"),
        # the seeds the images were generated with (generate_t2i), from their table
        seeds={"train": provenance.train_seed(model_info), "generation": how["seeds"]},
        feature_net={"name": net.name, **(params.get("feature_net") or {})},
        classifier=record["classifier"],
    )
    record = provenance.stamp(record, prov)
    write_parquet(out["predictions"], preds)
    write_json(out["metrics"], record)
    print(json.dumps(record))


def t2i_compare_grid(inp: dict, out: dict, params: dict) -> None:
    """Rule ``t2i_compare_grid``: base | methods side by side, judge labels."""
    import pandas as pd
    import torch

    from ..generate import compare_grid
    from ..io import read_parquet
    from ..metrics.t2i_eval import load_generated

    images, tables = {}, {}
    for m, prompts_path, preds_path in zip(params["methods"], inp["prompts"], inp["predictions"]):
        prompts = read_parquet(prompts_path)
        preds = read_parquet(preds_path)
        parts = []
        for which in ("forget", "retain"):
            img, rows = load_generated(prompts, which)
            p = preds[preds["set"] == which].reset_index(drop=True)
            if not p["file"].equals(rows["file"]):
                raise UnlearnflowError(f"{preds_path}: its {which} rows do not match {prompts_path}; rerun evaluate_t2i")
            parts.append((img, p))
        images[m] = torch.cat([a for a, _ in parts])
        tables[m] = pd.concat([b for _, b in parts], ignore_index=True)
    grid = compare_grid(images, tables)
    with atomic_path(out["png"]) as tmp:
        grid.save(tmp, format="PNG")
    print(f"wrote {out['png']}: {grid.width} x {grid.height} px, models {list(images)}")


def t2i_table(inp: dict, out: dict, params: dict) -> None:
    """Rule ``t2i_table``: UnlearnCanvas-style rows, the judge named in the caption."""
    from .. import tables

    records = []
    for path in inp["records"]:
        r = read_json(path)
        if "sampling" not in r:
            raise InputFileError(path, "no 'sampling' entry (written before the sampler was recorded); rerun evaluate_t2i")
        r["method"] = "original" if r["method"] == "base" else r["method"]
        records.append(r)
    df = tables.t2i_table(records, params["costs"])
    nets = sorted(set(df["feature_net"].dropna()))
    judges = sorted({str(r.get("classifier")) for r in records})
    if inp.get("judge"):
        judge = read_json(inp["judge"])
        stale = sorted({r["target"] + "/" + r["method"] for r in records if r.get("judge") not in (None, judge["name"])})
        if stale:
            raise InputFileError(inp["judge"], f"records {stale} were scored by another judge; rerun evaluate_t2i")
    caption = (
        f"Text-to-image unlearning (UA / IRA / CRA by the {'; '.join(judges)}; "
        f"FID / KID / IS / CLIP score in the feature space of {', '.join(nets)}; {sampling_caption(records)})"
        + tables.search_caption(df)
    )
    # the markdown opens with the caption too: it names the judge
    tables.write_tables(df, out["csv"], out["md"], out["tex"], caption, caption_in_md=True)
    tables.write_provenance(out["provenance"], records, df)
    print(df.to_markdown(index=False, floatfmt=".2f"))
