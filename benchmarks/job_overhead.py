"""Per-job start-up: a job's wall time minus its stage function's time.

    .venv/bin/python benchmarks/run.py --only job_overhead                # the repo's results/ and logs/
    .venv/bin/python benchmarks/run.py --only job_overhead --results DIR/results

Reads a finished run: every job's benchmark file (``results/benchmarks/
RULE/....tsv``, Snakemake's wall seconds of the whole job) and its log
(``logs/RULE/....log``), whose last line says ``stage NAME finished in S s
(imports I s)`` (``unlearnflow.cli.run_stage``; I: wall seconds in the
outermost import statements while the stage ran, i.e. the field libraries
it loads lazily). Two overheads per job:

- ``overhead`` = wall - S: what the issue's target is about (Python, the
  Snakemake script preamble, the stage module's import, the provenance
  record), target <= 2 s median;
- ``start-up`` = wall - (S - I): the same plus the library imports the stage
  does itself (torch, open_clip, diffusers...): the honest per-job cost of a
  process, printed beside it.

The end_to_end benchmark runs this on its scratch copy.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from benchlib import Context, MissingInputs, Result

LINE = re.compile(r"stage (\w+) finished in ([\d.]+) s(?: \(imports ([\d.]+) s\))?")
LIMIT_S = 2.0


def read_jobs(results: Path) -> list[dict]:
    """One row per job with a benchmark file and a log naming its stage time."""
    logs = results.parent / "logs"
    rows = []
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        rel = tsv.relative_to(results / "benchmarks")
        log = (logs / rel).with_suffix(".log")
        if not log.exists():
            continue
        found = LINE.findall(log.read_text(errors="replace"))
        if not found:
            continue
        _, stage_s, imports_s = found[-1]
        lines = tsv.read_text().splitlines()
        if len(lines) < 2:
            continue
        wall = float(lines[1].split("\t")[0])
        rows.append(
            {
                "rule": rel.parts[0],
                "job": str(rel.with_suffix("")),
                "wall": wall,
                "stage": float(stage_s),
                "imports": float(imports_s) if imports_s else float("nan"),
            }
        )
    return rows


def summarise(rows: list[dict]) -> dict:
    over = [r["wall"] - r["stage"] for r in rows]
    timed = [r for r in rows if r["imports"] == r["imports"]]
    startup = [r["wall"] - r["stage"] + r["imports"] for r in timed]
    by_rule: dict[str, list[float]] = {}
    for r in rows:
        by_rule.setdefault(r["rule"], []).append(r["wall"] - r["stage"])
    return {
        "jobs": len(rows),
        "median_overhead": statistics.median(over),
        "total_overhead": sum(over),
        "median_startup": statistics.median(startup) if startup else float("nan"),
        "total_startup": sum(startup),
        "timed_imports": len(timed),
        "by_rule": {k: statistics.median(v) for k, v in sorted(by_rule.items())},
        "wall_total": sum(r["wall"] for r in rows),
    }


def results_for(results: Path, name: str = "job_overhead") -> list[Result]:
    rows = read_jobs(results)
    if not rows:
        raise MissingInputs(f"no job with a benchmark file and a stage log under {results}: run the DAG first")
    s = summarise(rows)
    details = [f"{k}: median overhead {v:.2f} s" for k, v in s["by_rule"].items()]
    return [
        Result(
            name,
            f"{s['jobs']} jobs: median overhead (wall - stage) {s['median_overhead']:.2f} s, "
            f"{s['total_overhead']:.0f} s in all of {s['wall_total']:.0f} s of job time",
            "median job overhead <= 2 s on 2 cores",
            s["median_overhead"] / LIMIT_S,
            1.0,
            details=details,
        ),
        Result(
            name + "_with_imports",
            f"median start-up incl. the stage's library imports {s['median_startup']:.2f} s "
            f"({s['total_startup']:.0f} s in all; {s['timed_imports']} jobs timed their imports)",
            "(context)",
            status="INFO",
        ),
    ]


def run(ctx: Context) -> list[Result]:
    return results_for(ctx.results)
