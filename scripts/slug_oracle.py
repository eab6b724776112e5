"""What the best single-layer SLUG edit could reach: every candidate layer x a
grid of step sizes, scored on a split, for a work directory that has run the
gradients and layer analysis of a target.

SLUG searches only its Pareto-front layers and stops on the validation split;
this sweep asks the question behind a failure: does *any* layer, at *any*
step, forget the target within a utility budget? If none does on the test
split, no layer choice or stop rule can fix it (issue 18).

    python scripts/slug_oracle.py RUN_DIR --target kite [--split test]
        [--budget 5 10] [--ratios 0.05,0.1,...] [--out sweep.parquet]

Each row: layer, tower, on the front or not, step norm / layer norm, FA@1,
FA@5, and the drops of identity and object (and style) accuracy from the
unedited model. Prints, per budget, the best layer (lowest FA@1, then the
smallest object drop).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from unlearnflow.gradients import load_gradients  # noqa: E402
from unlearnflow.io import read_parquet  # noqa: E402
from unlearnflow.methods.slug import ProbeEvaluator, edited  # noqa: E402
from unlearnflow.metrics.clip_eval import UTILITY, EvalSuite  # noqa: E402
from unlearnflow.models.clip import load_clip  # noqa: E402
from unlearnflow.targets import merge_targets  # noqa: E402

RATIOS = "0.02,0.05,0.1,0.125,0.15,0.175,0.2,0.25,0.3,0.5,0.75,1,1.5,2,3,5"


def run_paths(run: Path, target_id: str, split: str, model: str = "tiny_clip") -> dict:
    """The files of a work directory that the sweep reads."""
    res = run / "results"
    ev = res / "data/eval"
    return {
        "model": res / "models" / model,
        "sets": {s: {"tar": ev / s / f"{split}.tar", "classes": ev / s / "classes.json"} for s in ("identities", "objects", "styles")},
        "grads": res / f"grads/{model}/{target_id}/forget.safetensors",
        "layers": res / f"layers/{model}/{target_id}.parquet",
    }


def sweep(paths: dict, target: dict, ratios: list[float]) -> pd.DataFrame:
    bundle = load_clip(paths["model"])
    suite = EvalSuite.load(paths["sets"], target, bundle.preprocess)
    grads, _ = load_gradients(paths["grads"])
    table = read_parquet(paths["layers"])
    fixed = {"feats": suite.image_features(bundle.model), "classifiers": suite.classifiers(bundle.model, bundle.tokenizer)}
    base = suite.score(fixed["feats"], fixed["classifiers"])
    utility = [k for k in UTILITY if k in base]
    rows = []
    for _, r in table[table["candidate"]].iterrows():
        evaluate = ProbeEvaluator(bundle, suite, r["name"], fixed)
        g = grads[r["name"]]
        scale = float(evaluate.theta0.float().norm()) / float(g.float().norm())
        for q in ratios:
            m = evaluate(edited(evaluate.theta0, g, q * scale))
            rows.append(
                {"layer": r["name"], "tower": r["tower"], "pareto": bool(r["pareto"]), "front_rank": int(r["front_rank"]),
                 "ratio": q, "fa1": m["fa1"], "fa5": m["fa5"], **{f"d_{k}": base[k] - m[k] for k in utility}}
            )
    df = pd.DataFrame(rows)
    df.attrs["base"] = base
    return df


def best(df: pd.DataFrame, budget_test: float, budget_id: float, n: int = 5) -> pd.DataFrame:
    ok = df[(df["d_test_acc1"] <= budget_test) & (df["d_identity_acc1"] <= budget_id)]
    first = ok.sort_values(["fa1", "d_test_acc1"]).groupby("layer").head(1)
    return first.sort_values(["fa1", "d_test_acc1"]).head(n)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a work directory that ran the target's layer analysis")
    ap.add_argument("--target", required=True, help="a target id of the run's config")
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "config.yaml")
    ap.add_argument("--split", default="test", choices=["val", "test"])
    ap.add_argument("--ratios", default=RATIOS, help="step norm / layer norm, comma-separated")
    ap.add_argument("--budget", nargs=2, type=float, action="append", metavar=("OBJECTS", "IDENTITIES"),
                    help="utility drops allowed (points); repeatable; default 3 5 and 5 10")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    import yaml

    targets = merge_targets(yaml.safe_load(a.config.read_text()))
    if a.target not in targets:
        sys.exit(f"{a.config}: no target {a.target!r}; known: {sorted(targets)}")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    df = sweep(run_paths(a.run, a.target, a.split), targets[a.target], [float(x) for x in a.ratios.split(",")])
    base = df.attrs["base"]
    print(f"{a.target} ({a.split}): {df['layer'].nunique()} layers x {df['ratio'].nunique()} steps in "
          f"{time.perf_counter() - t0:.0f} s; unedited: " + ", ".join(f"{k} {base[k]:.2f}" for k in
                                                                       ("fa1", "fa5", "identity_acc1", "test_acc1")))
    if a.out:
        df.to_parquet(a.out)
    short = lambda s: s.replace("transformer.resblocks.", "r").replace(".weight", "")  # noqa: E731
    for bt, bi in a.budget or [(3.0, 5.0), (5.0, 10.0)]:
        b = best(df, bt, bi).assign(layer=lambda d: d["layer"].map(short))
        print(f"\nbest within objects -{bt:g} / identities -{bi:g}:")
        print(b.round(2).to_string(index=False) if len(b) else "  no edit within this budget")


if __name__ == "__main__":
    main()
