"""SLUG step-size search: one probe, and the whole search, against one full evaluation.

    .venv/bin/python benchmarks/clip_search.py [--target mira_castell] [--repeats 3]
    (or: .venv/bin/python benchmarks/run.py --only clip_search)

Reads the default pipeline's model, data, gradients and layer table (run
`make run` first). "One full evaluation" is what the ``evaluate_clip`` rule
does once the model is loaded: read the test split, zero-shot record,
encode the forget and held-out pairs, the MIA (10 seeds). Everything is
timed interleaved with it; a ratio is the median over repeats of the
paired ratios in this process's CPU time (wall-clock ones beside; the
zero-shot part of the evaluation alone is given too):

- ``search_probe``: one cached probe (``ProbeEvaluator``) for edits in the
  text tower, the patch embedding (no cache possible: a full image
  forward), the first and the last vision block and the vision projection;
  the worst layer is the result (target <= 0.2);
- ``search_whole``: SLUG's method run as the ``unlearn_clip`` rule runs it
  (read the forget gradient, the val split and the layer table, base record,
  every front layer searched) at config.yaml's ``methods.slug``
  (target <= 3).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchlib import Context, Result, interleaved, load_config, median


def eval_sets(res: Path, split: str) -> dict:
    return {s: {"tar": res / f"data/eval/{s}/{split}.tar", "classes": res / f"data/eval/{s}/classes.json"} for s in ("identities", "objects")}


def full_evaluation(bundle, res: Path, target_id: str, target: dict, zero_shot_only: bool = False, mia: bool = True) -> dict:
    """The evaluate_clip stage after load_clip (no file written); without
    ``mia`` the pairs are encoded but no regression is fitted."""
    from unlearnflow.metrics.clip_eval import EvalSuite
    from unlearnflow.metrics.mia import encode_pairs, mia_accuracy

    suite = EvalSuite.load(eval_sets(res, "test"), target, bundle.preprocess)
    record = suite.evaluate(bundle.model, bundle.tokenizer, bundle.device)
    if zero_shot_only:
        return record
    members = encode_pairs(bundle.model, bundle.tokenizer, res / f"data/{target_id}/forget.tar", bundle.preprocess, device=bundle.device)
    nonmembers = encode_pairs(bundle.model, bundle.tokenizer, res / f"data/{target_id}/heldout.tar", bundle.preprocess, device=bundle.device)
    if mia:
        record["mia"] = mia_accuracy(members, nonmembers, seeds=range(10))["mean"]
    return record


def probe_layers(model) -> list[str]:
    n_blocks = len(model.visual.transformer.resblocks)
    return [
        "transformer.resblocks.1.mlp.c_fc.weight",
        "visual.conv1.weight",
        "visual.transformer.resblocks.0.mlp.c_fc.weight",
        f"visual.transformer.resblocks.{n_blocks - 1}.mlp.c_fc.weight",
        "visual.proj",
    ]


def run(ctx: Context) -> list[Result]:
    import torch

    from unlearnflow.gradients import load_gradients
    from unlearnflow.methods import MethodContext
    from unlearnflow.methods import slug
    from unlearnflow.metrics.clip_eval import EvalSuite
    from unlearnflow.models.clip import load_clip

    torch.set_num_threads(ctx.threads)
    res, t_id = ctx.results, ctx.target
    grad_file = res / f"grads/{ctx.model}/{t_id}/forget.safetensors"
    layers_file = res / f"layers/{ctx.model}/{t_id}.parquet"
    ctx.need(ctx.model_dir / "open_clip_model.safetensors", grad_file, layers_file, res / "data/eval/identities/test.tar")
    target = ctx.target_config()
    bundle = load_clip(ctx.model_dir)
    params = load_config()["methods"].get("slug", {})
    repeats = 1 if ctx.quick else ctx.repeats

    # -- one probe per layer, against the full evaluation
    val = EvalSuite.load(eval_sets(res, "val"), target, bundle.preprocess)
    grads, _ = load_gradients(grad_file)
    fns = {
        "full": lambda: full_evaluation(bundle, res, t_id, target),
        "zero_shot": lambda: full_evaluation(bundle, res, t_id, target, zero_shot_only=True),
        "no_regression": lambda: full_evaluation(bundle, res, t_id, target, mia=False),
        "uncached_val": lambda: val.evaluate(bundle.model, bundle.tokenizer),
    }
    layers = probe_layers(bundle.model)
    for layer in layers:
        probe = slug.ProbeEvaluator(bundle, val, layer)
        g = grads[layer]
        t = slug.edited(probe.theta0, g, 0.1 * float(probe.theta0.norm() / g.norm()))
        fns[layer] = (lambda p, t: lambda: p(t))(probe, t)
    times = interleaved(fns, max(repeats, 2), warmup=not ctx.quick)
    full = median(times["full"])
    ratios = {layer: times.ratio(layer, "full") for layer in layers}
    worst = max(ratios, key=ratios.get)
    details = [
        f"full evaluation (test split, zero-shot + MIA): {times.show('full')}",
        f"without the MIA's regressions: {times.show('no_regression')}",
        f"its zero-shot part alone: {times.show('zero_shot')}; uncached val-split evaluation: {times.show('uncached_val')}",
    ] + [
        f"probe {layer}: {median(times[layer]) * 1e3:.1f} ms wall; {ratios[layer]:.3f} of a full evaluation "
        f"({times.ratio(layer, 'full', cpu=False):.3f} wall), {times.ratio(layer, 'zero_shot'):.3f} of its zero-shot part"
        for layer in layers
    ]
    out = [
        Result(
            "search_probe",
            f"worst probe ({worst}) {median(times[worst]) * 1e3:.0f} ms vs full evaluation {full * 1e3:.0f} ms (wall, medians); "
            f"{times.both(worst, 'full')}",
            "probe / full evaluation <= 0.2",
            ratios[worst],
            0.2,
            details=details,
        )
    ]

    # -- the whole search (the method as the unlearn_clip rule runs it)
    mctx = MethodContext(
        bundle=bundle,
        target=target,
        grad_forget=grad_file,
        layers=layers_file,
        val_sets=eval_sets(res, "val"),
    )
    info = {}

    def whole():
        info["result"] = slug.run(mctx, params)

    times = interleaved({k: fns[k] for k in ("full", "no_regression", "zero_shot")} | {"search": whole}, repeats)
    full, search = median(times["full"]), median(times["search"])
    r = info["result"].info
    out.append(
        Result(
            "search_whole",
            f"SLUG search {search:.2f} s ({r['probes']} probes over {len(r['layers_searched'])} layers) "
            f"vs full evaluation {full:.2f} s (wall, medians); {times.both('search', 'full')}",
            "whole search / full evaluation <= 3",
            times.ratio("search", "full"),
            3.0,
            details=[
                f"search: {times.show('search')}",
                f"full: {times.show('full')}",
                f"against the evaluation without the MIA's logistic regressions (pairs still encoded): "
                f"{times.ratio('search', 'no_regression'):.2f} ({times.ratio('search', 'no_regression', cpu=False):.2f} wall); "
                f"against its zero-shot part alone: {times.ratio('search', 'zero_shot'):.2f} "
                f"({times.ratio('search', 'zero_shot', cpu=False):.2f} wall)",
                f"chosen {r['layer']} (lambda {r['lambda']:.4g}, {r['status']})",
            ],
        )
    )
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(Context.results))
    ap.add_argument("--target", default=Context.target)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from benchlib import table

    ctx = Context(results=Path(args.results), target=args.target, repeats=args.repeats, threads=args.threads)
    results = run(ctx)
    print(table(results))
    for r in results:
        for d in r.details:
            print(f"  {r.name}: {d}")


if __name__ == "__main__":
    main()
