"""Text-to-image SLUG's total cost against SalUn's, from a run's benchmark files.

    .venv/bin/python benchmarks/run.py --only t2i_cost [--results DIR/results]

What the text-to-image table's ``seconds`` column sums, per target (the
default DAG's ``results/benchmarks``; wall seconds of each job, process
start included, and the jobs' CPU seconds beside):

- SLUG = the CLIP forget gradient pass of the target + the retain pass (the
  shared one when the retain set is shared: counted whole, as the table
  does, though every target reads it) + the layer analysis + the
  ``unlearn_t2i`` job (the step-size search on generated images);
- SalUn = the UNet saliency masks + the ``unlearn_t2i`` job (training).

Target: SLUG / SalUn <= 0.3 on each default target. The search's own share
(the ``unlearn_t2i`` job alone) is printed beside.
"""

from __future__ import annotations

import csv
from pathlib import Path

from benchlib import Context, MissingInputs, Result, load_config


def _read(path: Path) -> tuple[float, float]:
    with open(path) as f:
        row = list(csv.DictReader(f, delimiter="\t"))[-1]
    return float(row["s"]), float(row.get("cpu_time") or "nan")


def costs(b: Path, clip: str, t2i: str, target: str, shared: bool = False) -> dict[str, dict[str, tuple[float, float]]]:
    owner = "shared" if shared else target
    parts = {
        "slug": {
            "forget gradients": b / f"clip_gradients/{clip}/{target}/forget.tsv",
            "retain gradients": b / f"clip_gradients/{clip}/{owner}/retain.tsv",
            "layer analysis": b / f"layer_analysis/{clip}/{target}.tsv",
            "search (unlearn_t2i)": b / f"unlearn_t2i/{t2i}/{target}/slug.tsv",
        },
        "salun": {
            "masks": b / f"t2i_salun_masks/{t2i}/{target}.tsv",
            "training (unlearn_t2i)": b / f"unlearn_t2i/{t2i}/{target}/salun.tsv",
        },
    }
    missing = [str(p) for m in parts.values() for p in m.values() if not p.exists()]
    if missing:
        raise MissingInputs(f"missing {missing[:3]}: run the default DAG first")
    return {m: {k: _read(p) for k, p in ps.items()} for m, ps in parts.items()}


def run(ctx: Context) -> list[Result]:
    cfg = load_config()
    clip, t2i = cfg["clip"]["name"], cfg["t2i"].get("name", "tiny_t2i")
    out = []
    for t in cfg["t2i"]["targets"]:
        c = costs(ctx.results / "benchmarks", clip, t2i, t["id"], cfg.get("selection", {}).get("shared_retain", False))
        wall = {m: sum(w for w, _ in v.values()) for m, v in c.items()}
        cpu = {m: sum(x for _, x in v.values()) for m, v in c.items()}
        search = c["slug"]["search (unlearn_t2i)"][0]
        out.append(
            Result(
                f"t2i_slug_vs_salun_{t['id']}",
                f"SLUG {wall['slug']:.1f} s vs SalUn {wall['salun']:.1f} s wall (jobs' CPU {cpu['slug']:.1f} vs "
                f"{cpu['salun']:.1f} s, ratio {cpu['slug'] / cpu['salun']:.2f}); the search job alone {search:.1f} s",
                "SLUG-t2i total <= 0.3x SalUn-t2i total",
                wall["slug"] / wall["salun"],
                0.3,
                details=[f"{m}: " + ", ".join(f"{k} {w:.1f} s ({x:.1f} CPU)" for k, (w, x) in v.items()) for m, v in c.items()],
            )
        )
    return out
