"""One function per rule of workflow/rules/evaluate.smk: I/O here, algorithms in
:mod:`unlearnflow.metrics.clip_eval` and :mod:`unlearnflow.metrics.mia`."""

from __future__ import annotations

from pathlib import Path


def evaluate_clip(inp: dict, out: dict, params: dict) -> None:
    """Rule ``evaluate_clip``: the test-split record of one model for one target.

    "A model" is the base model plus an optional delta, so any checkpoint
    can be scored the same way.
    """
    import torch

    from .. import provenance
    from ..io import read_json, write_json
    from ..metrics.clip_eval import METRICS, EvalSuite, eval_sets_from
    from ..metrics.mia import encode_pairs, mia_accuracy
    from ..models.clip import load_clip, resolve_device
    from ..seeds import method_of

    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    device = resolve_device(params.get("device", "auto"))
    bundle = load_clip(Path(inp["config"]).parent, device=device, delta=inp.get("delta"))
    suite = EvalSuite.load(eval_sets_from(inp, "test"), params["target"], bundle.preprocess)
    record = suite.evaluate(bundle.model, bundle.tokenizer, device)
    members = encode_pairs(bundle.model, bundle.tokenizer, inp["forget"], bundle.preprocess, device=device)
    nonmembers = encode_pairs(bundle.model, bundle.tokenizer, inp["heldout"], bundle.preprocess, device=device)
    mia_seeds = list(range(int(params["mia_seeds"])))
    mia = mia_accuracy(members, nonmembers, seeds=mia_seeds, test_size=float(params["mia_test_size"]))
    if mia["test_pairs"] < 20:
        print(
            f"warning: MIA scores each split on {mia['test_pairs']} pairs ({mia['n_per_class']} per class, "
            f"test share {mia['test_size']:g}): its value is mostly noise; more held-out pairs make it meaningful"
        )
    record.update(
        mia=mia["mean"],
        mia_std=mia["std"],
        mia_test_size=mia["test_size"],
        mia_test_pairs=mia["test_pairs"],
        forget_cosine=float(members.mean()),
        heldout_cosine=float(nonmembers.mean()),
        target=params["target_id"],
        method=method_of(params["method"]),
        run=params["method"],
        seed=params.get("seed"),
        model_fingerprint=bundle.info.get("fingerprint", ""),
        delta=str(inp.get("delta") or ""),
        # the method's own search verdict, so a table row can say it missed
        search=read_json(inp["run_info"]).get("status") if inp.get("run_info") else None,
    )
    prov = provenance.evaluation_record(
        model_fingerprint=bundle.info.get("fingerprint", ""),
        delta=inp.get("delta"),
        seeds={"train": provenance.train_seed(bundle.info), "mia": mia_seeds, "unlearn": params.get("seed")},
    )
    write_json(out["json"], provenance.stamp(record, prov))
    print({k: record[k] for k in ("method", "seed", "target", *METRICS, "mia")})
