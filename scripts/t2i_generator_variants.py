"""The default text-to-image model under several training or sampling
settings, each judged like the DAG judges the base model.

    .venv/bin/python scripts/t2i_generator_variants.py RUN \
        [--variant NAME='{"steps": 1500}' ...] [--scheduler NAME='{"prediction_type": "epsilon"}'] \
        [--model DIR] [--sampling NAME='{"sampler": "ddpm", "steps": 50}' ...] [--seeds N] \
        [--out generator_variants.csv] [--keep DIR]

RUN is a folder where the default DAG ran (its shards, CLIP, evaluation sets
and judge are read; nothing there is written). For each training variant
(params merged over config.yaml's ``t2i.train``, and a ``unet_cfg`` key over
``t2i.unet_cfg``; ``"snr_gamma"``: Min-SNR-gamma loss weights, and
``"lowres"``: {"steps", "batch_size", "size"}, a low-resolution phase first;
``"timestep_bias"``: {"strategy", "multiplier", "portion"}, biased training
timesteps; ``"ema"``: a list of EMAModel settings, each average judged as
its own row; none of them a config option; ``--scheduler`` adds overrides of the tiny scheduler for a variant of
the same name): train the tiny UNet in a scratch folder (or
DIR/NAME with ``--keep``). With ``--model DIR`` nothing is trained: DIR is
judged. Each model is then sampled under every ``--sampling`` variant
(overrides of config.yaml's ``t2i.sampling``; default: that alone), on every
default t2i target's forget and retain prompts with the evaluation seeds
(or seeds 0..N-1), and the judge's accuracy per prompt set and domain is
printed with the training seconds. What decided issue 17's generator
(docs/fidelity.md item 12).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv=None) -> int:
    import pandas as pd
    import torch
    import yaml

    from unlearnflow.data.select import Matcher
    from unlearnflow.generate import prompt_sets
    from unlearnflow.metrics.judge import correctness, load_judge
    from unlearnflow.models import diffusion as D

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--variant", action="append", default=[], help="NAME=JSON training params over config.yaml's")
    ap.add_argument("--scheduler", action="append", default=[], help="NAME=JSON tiny-scheduler overrides of variant NAME")
    ap.add_argument("--model", type=Path, help="judge this model folder instead of training one")
    ap.add_argument("--sampling", action="append", default=[], help="NAME=JSON overrides of t2i.sampling")
    ap.add_argument("--seeds", type=int, help="sampling seeds 0..N-1 (default: t2i.sampling.seeds)")
    ap.add_argument("--out", type=Path, default=Path("generator_variants.csv"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training and sampling (the DAG's jobs: 1)")
    ap.add_argument("--keep", type=Path, help="save each variant's model in DIR/NAME (default: a scratch folder)")
    args = ap.parse_args(argv)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    res = args.run / "results"
    torch.set_num_threads(args.threads)
    variants = dict(v.split("=", 1) for v in args.variant) or {"config": "{}"}
    scheds = dict(v.split("=", 1) for v in args.scheduler)
    samplings = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.sampling)} or {"config": {}}
    syn = cfg["data"]["synthetic"]
    concepts = {k: syn[k] for k in ("identities", "objects", "styles")}
    judge = load_judge(res / "models/judge" / cfg["t2i"]["judge"].get("name", "tiny_judge") / "judge.json")
    seeds = list(range(args.seeds)) if args.seeds else list(cfg["t2i"]["sampling"]["seeds"])
    rows = []

    def judged(model_dir, row):
        bundle = D.load_t2i(model_dir)
        for sname, over in samplings.items():
            s = D.sampling_options({**cfg["t2i"]["sampling"], **over})
            out = {**row, "sampling": sname, "seeds": len(seeds)}
            t0 = time.time()
            for target in cfg["t2i"]["targets"]:
                for which, table in prompt_sets(target, concepts, seeds=seeds).items():
                    img = D.generate(bundle, list(table["prompt"]), [int(x) for x in table["seed"]], **s)
                    acc = correctness(judge, img, [json.loads(v) for v in table["labels"]])
                    for domain, v in acc.items():
                        out[f"{target['id']}/{which}/{domain}"] = round(100 * float(pd.Series(v).dropna().mean()), 1)
            out["sample_s"] = round(time.time() - t0, 1)
            rows.append(out)
            print(json.dumps(out), flush=True)

    if args.model:
        judged(args.model, {"variant": str(args.model)})
    base_sched = dict(D.TINY_SCHEDULER)
    for name, over in ({} if args.model else variants).items():
        train = {**cfg["t2i"]["train"], **json.loads(over)}
        D.TINY_SCHEDULER.clear()
        D.TINY_SCHEDULER.update({**base_sched, **json.loads(scheds.get(name, "{}"))})
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = args.keep / name if args.keep else Path(tmp) / "m"
            t0 = time.time()
            info = D.train_tiny_t2i(
                [res / f"data/laion/{s}.tar" for s in cfg["data"]["shards"]], res / "models" / cfg["clip"]["name"], model_dir,
                unet_cfg={**D.TINY_UNET, **(cfg["t2i"].get("unet_cfg") or {}), **train.get("unet_cfg", {})},
                seed=cfg["seeds"]["train"], threads=args.threads, oversample=train.get("oversample"), snr_gamma=train.get("snr_gamma"), lowres=train.get("lowres"), timestep_bias=train.get("timestep_bias"), ema=train.get("ema"), concepts=concepts, matcher=lambda names: Matcher(names[0], aliases=list(names[1:])),
                **{k: train[k] for k in ("steps", "batch_size", "lr", "warmup_steps", "cond_dropout")},
            )  # fmt: skip
            judged(model_dir, {"variant": name, "train_s": round(time.time() - t0, 1), "final_loss": info["train"]["final_loss"]})
            for i, e in enumerate(train.get("ema") or []):  # the same run's averaged weights
                judged(Path(f"{model_dir}_ema{i}"), {"variant": f"{name} ema {e}"})
    D.TINY_SCHEDULER.clear()
    D.TINY_SCHEDULER.update(base_sched)
    df = pd.DataFrame(rows)
    df.to_csv(args.out, index=False)
    print(df.to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
