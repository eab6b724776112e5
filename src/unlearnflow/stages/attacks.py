"""One function per rule of workflow/rules/attacks.smk: I/O here, algorithms in
:mod:`unlearnflow.attacks` (``clip``, ``t2i``, the robustness table)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..io import UnlearnflowError


# ------------------------------------------------------------------ CLIP
def _clip_setup(inp: dict, params: dict):
    """The attacked CLIP (base + delta), its test-split suite, the device and
    the rows' provenance."""
    import torch

    from ..attacks import attack_record
    from ..metrics.clip_eval import EvalSuite, eval_sets_from
    from ..models.clip import load_clip, resolve_device

    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    torch.manual_seed(int(params["seed"]))
    device = resolve_device(params.get("device", "auto"))
    bundle = load_clip(Path(inp["config"]).parent, device=device, delta=inp.get("delta"))
    suite = EvalSuite.load(eval_sets_from(inp, "test"), params["target"], bundle.preprocess)
    record = attack_record(bundle.info.get("fingerprint", ""), inp.get("delta"), params["seed"])
    return bundle, suite, device, record


def _forget_pairs(bundle, tar):
    """The forget set's (images, captions) at the model's input size."""
    from ..models.clip import load_pairs

    size = bundle.model.visual.image_size
    return load_pairs(tar, size[0] if isinstance(size, (tuple, list)) else int(size))


def attack_clip(inp: dict, out: dict, params: dict) -> None:
    """Rule ``attack_clip``: the paraphrase and soft-prompt attacks on one model."""
    from ..attacks import frame, merge_params, no_attack_error, row, table_method
    from ..attacks.clip import (
        PARAPHRASE_DEFAULTS, SOFT_PROMPT_DEFAULTS, Attacker, paraphrase_attack, soft_prompt_attack, training_images,
    )  # fmt: skip
    from ..io import write_parquet

    bundle, suite, device, record = _clip_setup(inp, params)
    att = Attacker(bundle, suite, device)
    cfg, seed = params["attacks"], int(params["seed"])
    forget_u8, captions = _forget_pairs(bundle, inp["forget"])
    target, method, fa1 = params["target_id"], table_method(params["method"]), att.before["fa1"]
    rows = []
    if cfg["paraphrase"]["enabled"]:
        p = merge_params(PARAPHRASE_DEFAULTS, cfg["paraphrase"], "attacks.clip.paraphrase")
        t0 = time.perf_counter()
        summary, _ = paraphrase_attack(att, captions, p)
        budget = f"{len(summary['variants'])} variants"
        rows.append(row("clip", target, method, "paraphrase", "fa1", fa1, summary.pop("after"), budget, time.perf_counter() - t0, record, **summary))
    if cfg["soft_prompt"]["enabled"]:
        p = merge_params(SOFT_PROMPT_DEFAULTS, cfg["soft_prompt"], "attacks.clip.soft_prompt")
        t0 = time.perf_counter()
        feats, labels = training_images(att, inp[f"{att.domain}_val"], forget_u8 if p["use_forget_set"] else None)
        result = soft_prompt_attack(att, feats, labels, p, seed)
        budget = f"{p['steps']} steps, lr {p['lr']:g}"
        rows.append(row("clip", target, method, "soft_prompt", "fa1", fa1, result.pop("after"), budget, time.perf_counter() - t0, record, **result))
    if not rows:
        raise no_attack_error("attacks.clip")
    write_parquet(out["attacks"], frame(rows))
    for r in rows:
        print(f"{r['attack']}: FA@1 {r['before']:.2f} -> {r['after']:.2f} ({r['budget']}, {r['seconds']:.1f} s)")


def relearn_clip(inp: dict, out: dict, params: dict) -> None:
    """Rule ``relearn_clip``: fine-tune one model on a few forget pairs."""
    import torch

    from ..attacks import frame, merge_params, relearn_row
    from ..attacks.clip import RELEARN_DEFAULTS, relearn
    from ..io import write_parquet

    bundle, suite, device, record = _clip_setup(inp, params)
    p = merge_params(RELEARN_DEFAULTS, params["relearn"], "attacks.clip.relearn")
    images, captions = _forget_pairs(bundle, inp["forget"])
    if len(images) < int(p["pairs"]):
        raise UnlearnflowError(f"{inp['forget']}: {len(images)} forget pairs, fewer than attacks.clip.relearn.pairs {p['pairs']}")
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(int(params["seed"])))[: int(p["pairs"])]
    t0 = time.perf_counter()
    curve = relearn(bundle, suite, images[pick], [captions[i] for i in pick.tolist()], p, params["seed"], device)
    r = relearn_row("clip", params["target_id"], params["method"], "fa1", curve, p, time.perf_counter() - t0, record, pick.tolist())
    write_parquet(out["attacks"], frame([r]))
    print("relearn FA@1 by step: " + ", ".join(f"{c['step']}: {c['fa1']:.1f}" for c in curve))


# ------------------------------------------------------------------ text-to-image
def _t2i_setup(inp: dict, params: dict):
    """The attacked text-to-image model (base + delta), the judge and the
    rows' provenance."""
    import torch

    from ..attacks import attack_record
    from ..metrics.judge import load_judge
    from ..models.clip import load_clip, resolve_device
    from ..models.diffusion import load_t2i

    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    torch.manual_seed(int(params["seed"]))  # a latent model's VAE samples, say
    device = resolve_device(params.get("device", "auto"))
    bundle = load_t2i(Path(inp["model"]).parent, device=device, delta=inp.get("delta"))
    clip_bundle = load_clip(Path(inp["clip_config"]).parent, device=device)
    judge = load_judge(inp["judge"], device=device, clip_bundle=clip_bundle)
    record = attack_record(bundle.info.get("fingerprint", ""), inp.get("delta"), params["seed"])
    return bundle, judge, record


def _forget_rows(params: dict):
    """The evaluation's forget prompts and seeds (the rows every attack uses)."""
    from ..generate import prompt_sets

    return prompt_sets(params["target"], params["concepts"], seeds=list(params["sampling"]["seeds"]))["forget"]


def attack_t2i(inp: dict, out: dict, params: dict) -> None:
    """Rule ``attack_t2i``: paraphrases and the adversarial prompt search on one model."""
    import pandas as pd
    import torch

    from ..attacks import frame, merge_params, no_attack_error, row, table_method
    from ..attacks.t2i import PARAPHRASE_DEFAULTS, PROMPT_SEARCH_DEFAULTS, attack_grid, paraphrase_attack, prompt_search
    from ..io import atomic_path, read_parquet, write_parquet
    from ..metrics.t2i_eval import load_generated

    bundle, judge, record = _t2i_setup(inp, params)
    target, cfg, sampling, seed = params["target"], params["attacks"], params["sampling"], int(params["seed"])
    forget = _forget_rows(params)
    preds = read_parquet(inp["predictions"])
    preds = preds[preds["set"] == "forget"].reset_index(drop=True)
    key = ["prompt", "seed"]
    if not preds[key].equals(forget[key]):
        raise UnlearnflowError(
            f"{inp['predictions']}: its forget prompts and seeds are not this config's; rerun evaluate_t2i"
        )
    pre = preds["correct"].to_numpy(bool)
    before = 100.0 * pre.mean()
    method, tid = table_method(params["method"]), target["id"]
    rows, found = [], pd.DataFrame()
    if cfg["paraphrase"]["enabled"]:
        merge_params(PARAPHRASE_DEFAULTS, cfg["paraphrase"], "attacks.t2i.paraphrase")
        t0 = time.perf_counter()
        summary = paraphrase_attack(bundle, judge, target, forget, sampling)
        budget = f"{len(summary['variants'])} variants"
        rows.append(row("t2i", tid, method, "paraphrase", "asr", before, summary.pop("after"), budget, time.perf_counter() - t0, record, **summary))
    grid_img = None
    if cfg["prompt_search"]["enabled"]:
        p = merge_params(PROMPT_SEARCH_DEFAULTS, cfg["prompt_search"], "attacks.t2i.prompt_search")
        t0 = time.perf_counter()
        reference, ref_rows = load_generated(read_parquet(inp["reference"]), "forget")
        if not ref_rows[key].equals(forget[key]):
            raise UnlearnflowError(f"{inp['reference']}: the base model's forget pictures are not this config's; rerun generate_t2i")
        attack = ~pre  # UnlearnDiffAtk attacks the prompts the unlearned model resists
        found = pd.DataFrame([{**forget.iloc[i][key].to_dict(), "success": True, "step": 0} for i in range(len(forget)) if pre[i]])
        trace, pictures, idx = [], None, None
        if attack.any():
            idx = torch.from_numpy(attack).nonzero().flatten()
            results, pictures, trace = prompt_search(
                bundle, judge, target, forget[attack].reset_index(drop=True), reference[idx], p, sampling, seed
            )
            found = pd.concat([found, pd.DataFrame(results)], ignore_index=True)
        after = 100.0 * (pre.sum() + (found["step"] > 0).sum()) / len(forget)
        budget = f"{p['tokens']} tokens, {p['timesteps']} timesteps x {p['iterations']} steps"
        rows.append(
            row(
                "t2i", tid, method, "prompt_search", "asr", before, after, budget, time.perf_counter() - t0, record,
                attacked=int(attack.sum()), pre_attack_successes=int(pre.sum()), trace=trace,
            )
        )  # fmt: skip
        if pictures is not None:
            unattacked, gen_rows = load_generated(read_parquet(inp["generated"]), "forget")
            if not gen_rows[key].equals(forget[key]):
                raise UnlearnflowError(f"{inp['generated']}: its forget prompts and seeds are not this config's; rerun generate_t2i")
            grid_img = attack_grid(judge, target, forget[attack].reset_index(drop=True), unattacked[idx], pictures)
    if not rows:
        raise no_attack_error("attacks.t2i")
    write_parquet(out["attacks"], frame(rows))
    cols = ["prompt", "seed", "success", "step", "adversarial_tokens", "adversarial_prompt", "text_roundtrip"]
    if len(found):  # in the forget prompts' order, joinable by position too
        found = forget[key].merge(found, on=key, how="left")
    write_parquet(out["prompts"], found.reindex(columns=cols))
    if grid_img is None:
        from PIL import Image

        grid_img = Image.new("RGB", (64, 16), "white")  # the search is off: an empty figure
    with atomic_path(out["grid"]) as tmp:
        grid_img.save(tmp, format="PNG")
    for r in rows:
        print(f"{r['attack']}: ASR {r['before']:.1f} -> {r['after']:.1f} ({r['budget']}, {r['seconds']:.1f} s)")


def relearn_t2i(inp: dict, out: dict, params: dict) -> None:
    """Rule ``relearn_t2i``: fine-tune the UNet on a few forget pairs."""
    import torch

    from ..attacks import frame, merge_params, relearn_row
    from ..attacks.t2i import RELEARN_DEFAULTS, relearn
    from ..io import write_parquet
    from ..models.clip import load_pairs

    bundle, judge, record = _t2i_setup(inp, params)
    p = merge_params(RELEARN_DEFAULTS, params["relearn"], "attacks.t2i.relearn")
    target, sampling = params["target"], params["sampling"]
    forget = _forget_rows(params)
    images, captions = load_pairs(inp["forget"], bundle.image_size)
    if len(images) < int(p["pairs"]):
        raise UnlearnflowError(f"{inp['forget']}: {len(images)} forget pairs, fewer than attacks.t2i.relearn.pairs {p['pairs']}")
    gen = torch.Generator().manual_seed(int(params["seed"]))
    pick = torch.randperm(len(images), generator=gen)[: int(p["pairs"])]
    t0 = time.perf_counter()
    curve = relearn(bundle, judge, target, forget, images[pick], [captions[i] for i in pick.tolist()], p, sampling, gen)
    r = relearn_row("t2i", target["id"], params["method"], "asr", curve, p, time.perf_counter() - t0, record, pick.tolist())
    write_parquet(out["attacks"], frame([r]))
    print("relearn ASR by step: " + ", ".join(f"{c['step']}: {c['asr']:.1f}" for c in curve))


# ------------------------------------------------------------------ table
def robustness_table(inp: dict, out: dict, params: dict) -> None:
    """Rule ``robustness_table``: the rows of every attack stage."""
    from .. import attacks
    from ..io import read_parquet, write_json
    from ..provenance import record_id
    from ..tables import write_tables

    paths = inp["attacks"] if isinstance(inp["attacks"], list) else [inp["attacks"]]
    frames = [read_parquet(p) for p in paths]
    for p, f in zip(paths, frames):
        missing = [c for c in attacks.COLUMNS if c not in f.columns]
        if missing:
            raise UnlearnflowError(f"{p}: not an attack file (lacks {missing})")
    records = {}
    for f in frames:  # each row's job record, keyed by its id
        ids = []
        for rec in f["provenance"]:
            if not isinstance(rec, str):
                raise UnlearnflowError("robustness table: an attack row has no provenance; rerun its attack job")
            record = json.loads(rec)
            ids.append(record_id(record))
            records[ids[-1]] = record
        f["provenance"] = ids
    df = attacks.robustness_table(frames)
    write_tables(df, out["csv"], out["md"], out["tex"], params["caption"], caption_in_md=True)
    write_json(out["provenance"], {pid: records[pid] for pid in dict.fromkeys(df["provenance"])})
    print(df.to_markdown(index=False, floatfmt=".2f"))
