"""The performance suite: every benchmark in one run, one summary table of ratios.

    .venv/bin/python benchmarks/run.py                  # all but end_to_end (~15 min on 2 shared cores)
    .venv/bin/python benchmarks/run.py --quick          # fewer repeats, smaller runs (a smoke check)
    .venv/bin/python benchmarks/run.py --only clip_search,slug_cost
    .venv/bin/python benchmarks/run.py --all            # with end_to_end (+17 min, both cores)
    .venv/bin/python benchmarks/run.py --only end_to_end --quick

Reads the default DAG's results (run `make run` first). Each benchmark runs
in this process where it can (the DAG ones start snakemake) and measures
both sides of its ratio in the same run, interleaved, medians. The table:
name, the raw figures, the target, the ratio, the limit on it, and PASS /
FAIL (INFO: context, MODEL: a cost model not a measurement, SKIP: could
not run here, SMOKE: a --quick end-to-end run, no verdict). Exit status 0
unless a benchmark crashed (a FAIL is a finding, not a crash). See
docs/performance.md for the figures and what they mean.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

import benchlib
from benchlib import Context, MissingInputs, Result

# name -> (module, what it measures); the order they run in
BENCHMARKS = {
    "gradient_overhead": ("gradient_overhead", "1. gradient stage vs bare forward+backward"),
    "clip_search": ("clip_search", "2. step-size search probe / whole search vs one full evaluation"),
    "slug_cost": ("slug_cost", "3. SLUG vs the baselines"),
    "equal_quality": ("equal_quality", "3b. cost at equal quality: baselines' epochs raised until they meet SLUG's bar"),
    "shared_retain": ("shared_retain", "3c. SLUG per target with one retain pass for 1, 4, 16 targets"),
    "t2i_cost": ("t2i_cost", "3d. text-to-image SLUG's total vs SalUn's, from the DAG's benchmark files"),
    "dag_overhead": ("dag_overhead", "4. no-op rerun of the default DAG; no torch in the DAG build"),
    "job_overhead": ("job_overhead", "4b. per-job start-up: job wall time minus its stage's time"),
    "omp_wait": ("omp_wait", "4c. OpenMP wait policy: a 2-thread and a 1-thread UNet training step"),
    "end_to_end": ("end_to_end", "5. the default DAG from nothing (opt-in: --all or --only end_to_end)"),
    "scale_plan": ("scale_plan", "6. gradient files and stage memory for ViT-B-32 / L-14 / H-14"),
    "gpu_gradients": ("gpu_gradients", "7. gradient stage of ViT-B-32 on CUDA"),
}
OPT_IN = {"end_to_end"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help=f"comma-separated names: {', '.join(BENCHMARKS)}")
    ap.add_argument("--all", action="store_true", help="include the opt-in end_to_end run")
    ap.add_argument("--quick", action="store_true", help="fewer repeats and smaller runs (a smoke check, not a measurement)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats per side (medians); default 3")
    ap.add_argument("--results", default=str(Context.results), help="the default DAG's results folder")
    ap.add_argument("--target", default=Context.target, help="the target whose sets and gradients are used")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (2: the design's laptop)")
    ap.add_argument("--gpu-arch", default="ViT-B-32", help="gpu_gradients: open_clip architecture (tiny: the default's)")
    ap.add_argument("--gpu-device", default="cuda", help="gpu_gradients: device (cpu: check the benchmark without a GPU)")
    ap.add_argument("--dag-targets", help="dag_overhead: comma-separated files to ask for instead of `all`")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            ap.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    else:
        names = [n for n in BENCHMARKS if args.all or n not in OPT_IN]
    ctx = Context(results=Path(args.results), target=args.target, threads=args.threads, repeats=args.repeats, quick=args.quick)

    started = datetime.datetime.now().astimezone()
    print(f"unlearnflow benchmarks, {started:%Y-%m-%d %H:%M %Z}; {benchlib.machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n")
    results: list[Result] = []
    crashed = False
    for name in BENCHMARKS:
        if name not in names:
            if name in OPT_IN and not args.only:
                results.append(Result(name, "not run (opt-in: --all or --only end_to_end; ~17 min)", "< 15 min on 2 cores", status="SKIP"))
            continue
        module, what = BENCHMARKS[name]
        print(f"== {name}: {what}", flush=True)
        t0 = time.perf_counter()
        try:
            mod = importlib.import_module(module)
            kw = {"arch": args.gpu_arch, "device": args.gpu_device} if name == "gpu_gradients" else {}
            if name == "dag_overhead" and args.dag_targets:
                kw = {"targets": [t for t in args.dag_targets.split(",") if t]}
            got = mod.run(ctx, **kw)
        except MissingInputs as exc:
            got = [Result(name, f"skipped: {exc}", "", status="SKIP")]
        except Exception as exc:  # report and go on with the others
            traceback.print_exc()
            got = [Result(name, f"crashed: {type(exc).__name__}: {exc}", "", status="ERROR")]
            crashed = True
        for r in got:
            print(f"   {r.name}: {r.measured} -> {r.verdict}")
            for d in r.details:
                print(f"      {d}")
        print(f"   ({time.perf_counter() - t0:.0f} s)\n", flush=True)
        results.extend(got)

    print(f"Summary ({benchlib.machine()}):")
    print(benchlib.table(results))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "started": started.isoformat(),
                    "machine": benchlib.machine(),
                    "argv": sys.argv,
                    "results": [dict(r.__dict__, verdict=r.verdict) for r in results],
                },
                indent=1,
            )
        )
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
