"""Text-to-image SLUG under several search settings, each scored like the DAG scores it.

    .venv/bin/python scripts/t2i_slug_variants.py RUN [--targets mira_castell,vellum] \
        [--variant NAME='{"probe_seeds": null, "probe_steps": null}' ...] [--out variants.csv]

RUN is a folder where the default DAG ran (its results/ are read, nothing
there is written). For each target and variant (method params merged over
config.yaml's ``t2i.methods.slug``): the ``unlearn_t2i`` stage, then
``generate_t2i`` and ``evaluate_t2i`` on the evaluation prompts and seeds,
in a scratch folder; one row per run: seconds of the search (CPU and wall),
probes, the chosen layer and lambda, and the evaluation's UA / IRA / CRA /
CLIP score. What decided issue 20's defaults (docs/performance.md).
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

DEFAULT_VARIANTS = {
    "whole_set_probes": {"probe_seeds": None, "probe_steps": None},
    "cheap_probes": {},
}


def inputs(res: Path, target: str, t2i: str, clip: str) -> dict:
    m, e = res / "models" / t2i, res / "data" / "eval"
    files = {"model": m / "model.json", "unet": m / "unet/diffusion_pytorch_model.safetensors",
             "text_encoder": m / "text_encoder/model.safetensors"}
    for s in ("identities", "objects", "styles"):
        files[f"{s}_val"], files[f"{s}_test"], files[f"{s}_classes"] = e / s / "val.tar", e / s / "test.tar", e / s / "classes.json"
    files["clip_config"] = res / "models" / clip / "open_clip_config.json"
    files["clip_weights"] = res / "models" / clip / "open_clip_model.safetensors"
    files["grad_forget"] = res / "grads" / clip / target / "forget.safetensors"
    files["layers"] = res / "layers" / clip / f"{target}.parquet"
    files["forget"] = res / "data" / target / "forget.tar"
    return {k: str(v) for k, v in files.items()}


def main(argv=None) -> int:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--targets", default="mira_castell,vellum")
    ap.add_argument("--variant", action="append", default=[], help="NAME=JSON params over config.yaml's")
    ap.add_argument("--out", type=Path, default=Path("t2i_slug_variants.csv"))
    ap.add_argument("--no-defaults", action="store_true", help="only the --variant ones (not whole_set_probes, cheap_probes)")
    args = ap.parse_args(argv)
    import pandas as pd

    from unlearnflow.stages.t2i import evaluate_t2i, generate_t2i, unlearn_t2i

    cfg = yaml.safe_load((args.run / "config.yaml").read_text())
    t2i, clip = cfg["t2i"].get("name", "tiny_t2i"), cfg["clip"]["name"]
    targets = {t["id"]: t for t in cfg["t2i"]["targets"]}
    syn = cfg["data"]["synthetic"]
    concepts = {k: syn[k] for k in ("identities", "objects", "styles")}
    variants = {} if args.no_defaults else dict(DEFAULT_VARIANTS)
    for v in args.variant:
        name, js = v.split("=", 1)
        variants[name] = json.loads(js)
    base_params = dict(cfg["t2i"]["methods"].get("slug") or {})
    rows = []
    for tid in args.targets.split(","):
        inp = inputs(args.run / "results", tid, t2i, clip)
        for name, over in variants.items():
            params = {**base_params, **over}
            with tempfile.TemporaryDirectory(prefix="t2i_variant_") as tmp:
                d = Path(tmp)
                out = {"delta": d / "delta.safetensors", "trace": d / "search.parquet", "info": d / "info.json"}
                c0, t0 = time.process_time(), time.perf_counter()
                unlearn_t2i(inp, out, {"method": "slug", "params": params, "target": targets[tid],
                                       "concepts": concepts, "guidance": cfg["t2i"]["sampling"]["guidance"],
                                       "seed": 0, "device": "cpu", "threads": 1})
                cpu, wall = time.process_time() - c0, time.perf_counter() - t0
                info = json.loads(out["info"].read_text())
                g = {"forget_dir": d / "gen/forget", "retain_dir": d / "gen/retain", "forget_grid": d / "fg.png",
                     "retain_grid": d / "rg.png", "prompts": d / "prompts.parquet"}
                delta = {"delta": str(out["delta"]), "info": str(out["info"])}
                generate_t2i({**inp, **delta}, g, {"target": targets[tid], "concepts": concepts,
                                                  "sampling": cfg["t2i"]["sampling"], "device": "cpu"})
                ev = {**inp, **delta, "prompts": str(g["prompts"])}
                evaluate_t2i(ev, {"metrics": d / "m.json"}, {"target": targets[tid], "method": "slug",
                                                            "feature_net": cfg["t2i"].get("feature_net", {"kind": "clip"}),
                                                            "device": "cpu"})
                m = json.loads((d / "m.json").read_text())
            row = {"target": tid, "variant": name, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
                   "probes": info["probes"], "layer": info["layer"], "lambda": info["lambda"], "status": info["status"],
                   **{k: m.get(k) for k in ("ua", "ira", "cra", "clip_score")}}
            print(row, flush=True)
            rows.append(row)
    pd.DataFrame(rows).to_csv(args.out, index=False)
    print(pd.DataFrame(rows).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
