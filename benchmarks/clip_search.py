"""SLUG step-size search: one probe against one full evaluation, side by side.

Run after `make run` (it reads the default pipeline's model, data and layer
tables):

    .venv/bin/python benchmarks/clip_search.py [--target mira_castell] [--repeats 5]

Prints, for edits in the text tower, in an early and a late vision block and
in the vision head, the median time of one cached probe, of the same
evaluation without caching, and of one full evaluation (test split + MIA, as
the evaluate_clip rule does), with their ratios; then one whole search.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from unlearnflow.gradients import load_gradients  # noqa: E402
from unlearnflow.io import read_parquet  # noqa: E402
from unlearnflow.methods.slug import ProbeEvaluator, edited, run_slug  # noqa: E402
from unlearnflow.metrics.clip_eval import EvalSuite  # noqa: E402
from unlearnflow.metrics.mia import encode_pairs  # noqa: E402
from unlearnflow.models.clip import load_clip  # noqa: E402


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(REPO / "results"))
    ap.add_argument("--model", default="tiny_clip")
    ap.add_argument("--target", default="mira_castell")
    ap.add_argument("--name", default="Mira Castell")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res = Path(args.results)
    model_dir = res / "models" / args.model
    if not (model_dir / "open_clip_model.safetensors").exists():
        sys.exit(f"{model_dir} has no model: run `make run` first")
    bundle = load_clip(model_dir)
    target = {"name": args.name, "kind": "identity"}

    def sets(split):
        return {
            s: {"tar": res / f"data/eval/{s}/{split}.tar", "classes": res / f"data/eval/{s}/classes.json"}
            for s in ("identities", "objects")
        }

    val = EvalSuite.load(sets("val"), target, bundle.preprocess)
    grads, _ = load_gradients(res / f"grads/{args.model}/{args.target}/forget.safetensors")
    table = read_parquet(res / f"layers/{args.model}/{args.target}.parquet")

    def full_evaluation():
        test = EvalSuite.load(sets("test"), target, bundle.preprocess)
        test.evaluate(bundle.model, bundle.tokenizer)
        for tar in ("forget", "heldout"):
            encode_pairs(bundle.model, bundle.tokenizer, res / f"data/{args.target}/{tar}.tar", bundle.preprocess)

    full = timed(full_evaluation, args.repeats)
    uncached_val = timed(lambda: val.evaluate(bundle.model, bundle.tokenizer), args.repeats)
    print(f"full evaluation (test split + MIA pairs): {full * 1e3:8.1f} ms")
    print(f"uncached evaluation of the val split:     {uncached_val * 1e3:8.1f} ms")
    print()
    print(f"{'edited layer':52s} {'probe ms':>9s} {'/uncached':>10s} {'/full':>7s}")
    n_blocks = len(bundle.model.visual.transformer.resblocks)
    layers = [
        "transformer.resblocks.1.mlp.c_fc.weight",
        "visual.transformer.resblocks.0.mlp.c_fc.weight",
        f"visual.transformer.resblocks.{n_blocks - 1}.mlp.c_fc.weight",
        "visual.proj",
    ]
    for layer in layers:
        probe = ProbeEvaluator(bundle, val, layer)
        theta0 = probe.theta0
        t = edited(theta0, grads[layer], 0.1 * float(theta0.norm() / grads[layer].norm()))
        cost = timed(lambda: probe(t), args.repeats)
        print(f"{layer:52s} {cost * 1e3:9.1f} {cost / uncached_val:10.3f} {cost / full:7.3f}")
    t0 = time.perf_counter()
    out = run_slug(bundle, val, grads, table, {})
    whole = time.perf_counter() - t0
    print()
    print(
        f"whole SLUG search: {len(out['trace'])} probes over {len(out['outcomes'])} layers in {whole:.2f} s "
        f"= {whole / full:.2f} full evaluations (target <= 3)"
    )


if __name__ == "__main__":
    main()
