"""SLUG's total cost against the fine-tuning baselines, on the same model and data.

    .venv/bin/python benchmarks/run.py --only slug_cost [--repeats 3]

In one process, on the default DAG's model and the target's forget/retain
tars, with config.yaml's method params (the baselines at their default
epochs), interleaved (slug, ga, ga_ft, salun, ft, slug, ...), medians:

- SLUG = forget gradient pass + retain gradient pass (tar -> file each) +
  layer analysis (files -> table; the Pareto plot, a report figure, is left
  out) + the method (read the gradient, the val split and the table, the
  search, the delta written);
- SalUn = forget gradient pass + its one mask (the fraction it uses) + the
  training; FT, GA, GA+FT = the training (sets read from the tars) + delta.

Model loading and process start are left out on both sides (one load for
all). Costs are this process's CPU seconds (the work, whatever else runs on
the machine; wall seconds beside); the ratio is the median over repeats of
SLUG_i / baseline_i, against the baseline with the lowest median. Target: SLUG at least 10x cheaper than the cheapest baseline
(ratio <= 0.1). Two more figures, each labelled: the same ratio from the
DAG's own benchmark files (process start included, one run each), and a
cost model of the paper's regime (a model, not a measurement).
"""

from __future__ import annotations

import csv
import math
import shutil
import tempfile
import time
from pathlib import Path

from benchlib import Context, Result, load_config, median

BASELINES = ("ga", "ga_ft", "salun", "ft")


class _Clock:
    """Wall and CPU seconds of named parts: ``with clock("part"): ...``."""

    def __init__(self):
        self.wall, self.cpu = {}, {}

    def __call__(self, name: str):
        clock = self

        class _Part:
            def __enter__(self):
                self.c0, self.t0 = time.process_time(), time.perf_counter()

            def __exit__(self, *exc):
                clock.wall[name] = time.perf_counter() - self.t0
                clock.cpu[name] = time.process_time() - self.c0

        return _Part()


def _eval_sets(res: Path, split: str = "val") -> dict:
    return {s: {"tar": res / f"data/eval/{s}/{split}.tar", "classes": res / f"data/eval/{s}/classes.json"}
            for s in ("identities", "objects")}


class Runner:
    def __init__(self, ctx: Context):
        import torch

        from unlearnflow.methods.finetune import snapshot
        from unlearnflow.models.clip import load_clip

        torch.set_num_threads(ctx.threads)
        self.ctx = ctx
        self.res = ctx.results
        self.data = self.res / "data" / ctx.target
        self.cfg = load_config()
        # the retain set config.yaml's DAG uses: the shared one (selection.shared_retain) or the target's own
        shared = self.cfg.get("selection", {}).get("shared_retain", False)
        self.retain = self.res / "data" / "shared" / "retain.tar" if shared else self.data / "retain.tar"
        ctx.need(ctx.model_dir / "open_clip_model.safetensors", self.data / "forget.tar", self.retain)
        self.target = ctx.target_config()
        self.bundle = load_clip(ctx.model_dir)
        self.theta0 = snapshot(self.bundle.model)
        self.tmp = Path(tempfile.mkdtemp(prefix="slug_cost_"))
        self.seed = int(self.cfg.get("seeds", {}).get("unlearn", 0))
        g = self.cfg.get("gradients", {})
        self.grad_kw = {"batch_size": int(g.get("batch_size", 64)), "amp": bool(g.get("amp", False))}
        self.losses = {"forget": g.get("forget_loss", "cosine"), "retain": g.get("retain_loss", "contrastive")}
        self.last = {}  # method -> its last MethodResult

    def reset(self):
        import torch

        with torch.no_grad():
            for n, p in self.bundle.model.named_parameters():
                p.copy_(self.theta0[n])

    def grads(self, which: str) -> Path:
        from unlearnflow.gradients import set_gradients

        out = self.tmp / f"{which}.safetensors"
        tar = self.retain if which == "retain" else self.data / "forget.tar"
        set_gradients(self.bundle, tar, out, which=which, loss=self.losses[which], **self.grad_kw)
        return out

    def method(self, name: str, **files):
        import torch

        from unlearnflow.methods import MethodContext, get_method, save_delta

        torch.manual_seed(self.seed)
        mctx = MethodContext(
            bundle=self.bundle,
            target=self.target,
            forget_tar=self.data / "forget.tar",
            retain_tar=self.retain,
            val_sets=_eval_sets(self.res),
            seed=self.seed,
            **files,
        )
        try:
            result = get_method(name).run(mctx, self.cfg["methods"].get(name, {}))
            save_delta(self.tmp / f"{name}_delta.safetensors", result.tensors, method=name, base="")
            self.last[name] = result
        finally:
            self.reset()
        return result

    def slug(self, clock: _Clock) -> None:
        from unlearnflow.io import write_parquet
        from unlearnflow.layers import analyse

        lc = self.cfg.get("layers", {})
        with clock("forget gradients"):
            gf = self.grads("forget")
        with clock("retain gradients"):
            gr = self.grads("retain")
        with clock("layer analysis"):
            table = analyse(
                gf,
                gr,
                self.ctx.model_dir / "open_clip_model.safetensors",
                use_abs_alignment=bool(lc.get("use_abs_alignment", False)),
                exclude=lc.get("exclude"),
                include_layernorm=bool(lc.get("include_layernorm", True)),
                matrices_only=bool(lc.get("matrices_only", False)),
            )
            write_parquet(self.tmp / "layers.parquet", table)
        with clock("search (method run)"):
            self.method("slug", grad_forget=gf, layers=self.tmp / "layers.parquet")

    def salun(self, clock: _Clock) -> None:
        from unlearnflow.gradients import load_gradients
        from unlearnflow.masks import DEFAULT_EXCLUDE, iter_topk_masks, mask_metadata, save_mask

        with clock("forget gradients"):
            gf = self.grads("forget")
        with clock("mask"):
            f = float(self.cfg["methods"].get("salun", {}).get("mask_fraction", 0.5))
            exclude = tuple(self.cfg.get("masks", {}).get("exclude", DEFAULT_EXCLUDE))
            grads, _ = load_gradients(gf)
            mask_file = self.tmp / "salun_mask.safetensors"
            for _f, masks, info in iter_topk_masks(grads, [f], exclude=exclude):
                save_mask(mask_file, masks, mask_metadata(info, gf, exclude))
            del grads
        with clock("training"):
            self.method("salun", mask=mask_file)

    def timed(self, name: str) -> _Clock:
        clock = _Clock()
        with clock("total"):
            if name == "slug":
                self.slug(clock)
            elif name == "salun":
                self.salun(clock)
            else:
                with clock("training"):
                    self.method(name)
        return clock


def dag_costs(res: Path, model: str, target: str) -> dict[str, float] | None:
    """Seconds per method from the DAG's benchmark files (as the costs table sums them)."""
    b = res / "benchmarks"
    retain_owner = "shared" if load_config().get("selection", {}).get("shared_retain") else target
    files = {
        "slug": [
            f"clip_gradients/{model}/{target}/forget",
            f"clip_gradients/{model}/{retain_owner}/retain",
            f"layer_analysis/{model}/{target}",
            f"unlearn_clip/{model}/{target}/slug",
        ],
        "salun": [f"clip_gradients/{model}/{target}/forget", f"salun_masks/{model}/{target}", f"unlearn_clip/{model}/{target}/salun"],
        **{m: [f"unlearn_clip/{model}/{target}/{m}"] for m in ("ga", "ga_ft", "ft")},
    }
    out = {}
    for m, parts in files.items():
        total = 0.0
        for p in parts:
            path = b / f"{p}.tsv"
            if not path.exists():
                return None
            with open(path) as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
            total += float(rows[-1]["s"])
        out[m] = total
    return out


def cost_model(n_forget: int, n_retain: int, epochs: int, probes: int, n_val: int, retain_shared_by: int = 1) -> dict:
    """Sample-passes (1 = one sample through forward + backward; a forward
    alone counts 1/3), by the methods' epoch definitions (see methods/finetune.py):
    GA: k epochs over the forget set; GA+FT and SalUn: k epochs over the forget
    set, each step also one retain batch; FT: k epochs over the retain set.
    SLUG: one pass over each set, plus ``probes`` forward passes over the
    ``n_val`` search images (an upper bound: probes reuse cached features)."""
    slug = n_forget + n_retain / retain_shared_by + probes * n_val / 3
    return {
        "slug": slug,
        "ga": epochs * n_forget,
        "ga_ft": 2 * epochs * n_forget,
        "salun": n_forget + 2 * epochs * n_forget,
        "ft": epochs * n_retain,
        # SSD: one importance pass over each set, its 10 lambdas probed on the val images
        "ssd": n_forget + n_retain + 10 * n_val / 3,
        # the simple model: k epochs over forget + retain vs one pass over each
        "k_epochs_over_both": epochs * (n_forget + n_retain),
    }


def _count(tar: Path) -> int:
    from unlearnflow.data.shards import iter_samples

    return sum(1 for _ in iter_samples(tar))


def run(ctx: Context) -> list[Result]:
    r = Runner(ctx)
    methods = ["slug", "ga"] if ctx.quick else ["slug", *BASELINES]
    repeats = 1 if ctx.quick else ctx.repeats
    runs: dict[str, list[_Clock]] = {m: [] for m in methods}
    for _ in range(repeats):  # interleaved: contention drifts over every method alike
        for m in methods:
            runs[m].append(r.timed(m))
            ctx.log(f"    slug_cost: {m} {runs[m][-1].wall['total']:.1f} s wall, {runs[m][-1].cpu['total']:.1f} s CPU")
    shutil.rmtree(r.tmp, ignore_errors=True)

    def med(m, part="total", cpu=True):
        return median([(c.cpu if cpu else c.wall)[part] for c in runs[m]])

    def paired(m, cpu=True):  # median over repeats of SLUG_i / m_i
        return median([(a.cpu if cpu else a.wall)["total"] / (b.cpu if cpu else b.wall)["total"] for a, b in zip(runs["slug"], runs[m])])

    baselines = [m for m in methods if m != "slug"]
    cheapest = min(baselines, key=med)
    parts = [k for k in runs["slug"][0].cpu if k != "total"]
    details = [
        "SLUG parts (CPU s / wall s): " + ", ".join(f"{k} {med('slug', k):.2f} / {med('slug', k, False):.2f}" for k in parts),
        *[
            f"{m}: {med(m):.2f} s CPU, {med(m, cpu=False):.2f} s wall ("
            + ", ".join(f"{k} {med(m, k):.2f}" for k in runs[m][0].cpu if k != "total")
            + f"); SLUG / {m} = {paired(m):.2f} CPU, {paired(m, False):.2f} wall"
            for m in baselines
        ],
        "params: " + ", ".join(f"{m}={r.cfg['methods'].get(m, {})}" for m in methods),
    ]
    if ctx.quick:
        details.append("quick: only GA among the baselines, one repeat")
    out = [
        Result(
            "slug_vs_baselines",
            f"SLUG {med('slug'):.1f} s vs cheapest baseline {cheapest} {med(cheapest):.1f} s CPU "
            f"({med('slug', cpu=False):.1f} vs {med(cheapest, cpu=False):.1f} s wall; in-process, median of {repeats}); "
            f"wall-clock ratio {paired(cheapest, False):.2f}",
            "SLUG >= 10x cheaper than the cheapest of FT, GA, GA+FT, SalUn",
            paired(cheapest),
            0.1,
            details=details,
        )
    ]
    dag = dag_costs(ctx.results, ctx.model, ctx.target)
    if dag:
        c = min((m for m in dag if m != "slug"), key=dag.get)
        out.append(
            Result(
                "slug_vs_baselines_dag",
                f"SLUG {dag['slug']:.1f} s (4 jobs) vs {c} {dag[c]:.1f} s (1 job), from results/benchmarks (process start included, one run)",
                "(context: what the costs table shows)",
                dag["slug"] / dag[c],
                status="INFO",
            )
        )
    # the cost model: this run's sizes, then the paper's regime
    cfg = r.cfg
    n_f, n_r = _count(r.data / "forget.tar"), _count(r.retain)
    k = int(cfg["methods"].get("ga", {}).get("epochs", 5))
    probes = int(r.last["slug"].info["probes"])
    n_val = sum(_count(p["tar"]) for p in _eval_sets(ctx.results).values())
    here = cost_model(n_f, n_r, k, probes, n_val)
    paper = cost_model(1000, 7972, 10, 10, 2500)
    shared = cost_model(1000, 7972, 10, 10, 2500, retain_shared_by=math.inf)
    for label, m, note in (
        ("cost_model_here", here, f"|F|={n_f}, |R|={n_r}, k={k}, {probes} probes x {n_val} val images"),
        ("cost_model_paper", paper, "|F|=1000, |R|=7972 (shard 00000), k=10, 10 probes x 2500 images"),
        ("cost_model_paper_shared_retain", shared, "as above, the retain pass shared by all targets (one shard for all)"),
    ):
        best = min(("ga", "ga_ft", "salun", "ft"), key=m.get)
        out.append(
            Result(
                label,
                f"MODEL, not a measurement: SLUG {m['slug']:.0f} vs {best} {m[best]:.0f} sample-passes ({note}); "
                f"vs k epochs over forget+retain {m['slug'] / m['k_epochs_over_both']:.2f}",
                "(model)",
                m["slug"] / m[best],
                status="MODEL",
            )
        )
    return out
