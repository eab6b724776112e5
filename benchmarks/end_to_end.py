"""End to end: the embedded default from nothing to all tables; wall time and peak memory.

    .venv/bin/python benchmarks/run.py --only end_to_end            # the real one: ~17 min, both cores
    .venv/bin/python benchmarks/run.py --only end_to_end --quick    # a smoke run on a tiny config (minutes)

Copies the repo's Snakefile, config.yaml, workflow/, profiles/, envs/ and
src/ into a fresh temporary directory (a snapshot: later edits of the
checkout do not leak into the run, and the stages import the snapshot's
library) and runs ``snakemake --cores 2`` there with nothing precomputed.
Wall time is the snakemake command's; peak memory is the largest sum of the
resident set sizes of snakemake and all its child processes, polled every
0.2 s (psutil). Target: under 15 minutes on 2 cores.

``--quick`` adds a config override (QUICK below: small shards, one epoch,
one target, SLUG only), asks for the CLIP table only (QUICK_TARGETS) and
reports SMOKE instead of a verdict: it checks that the benchmark works,
not the target. The directory is removed after a
successful run (kept on failure, and with UNLEARNFLOW_KEEP_E2E=1).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import REPO, Context, Result, fmt_bytes

SNAKEMAKE = Path(sys.executable).parent / "snakemake"
COPY = ("Snakefile", "config.yaml", "workflow", "profiles", "envs", "src")
LIMIT_S = 15 * 60

# A tiny version of the default, for the smoke run. Lists replace the
# default's; mappings are merged into it (Snakemake's --configfile).
QUICK = {
    "data": {
        "synthetic": {"samples_per_shard": 300},
        "eval": {
            "identities": {"source": "synthetic", "per_class": {"val": 2, "test": 3}},
            "objects": {"source": "synthetic", "per_class": {"val": 2, "test": 3}},
            "styles": {"source": "synthetic", "per_class": {"val": 1, "test": 1}},
        },
    },
    "selection": {"retain_size": 100},
    "clip": {"train": {"epochs": 1, "warmup_steps": 5}},
    "run_methods": ["slug"],
    "masks": {"fractions": [0.5]},
    "targets": [{"id": "mira_castell", "name": "Mira Castell", "kind": "identity"}],
}
# ... and asks for the CLIP table only (what it pulls in: data, the CLIP
# pretraining, gradients, layers, SLUG, evaluation), not the whole `all`
QUICK_TARGETS = ["results/tables/clip_unlearning.md"]


def snapshot(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache")
    for name in COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore, symlinks=True)
        elif src.exists():
            shutil.copy2(src, dest / name)


class PeakRSS(threading.Thread):
    """Largest summed RSS of a process and its descendants, polled."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.peak_procs = 0
        self._halt = threading.Event()

    def run(self):
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._halt.is_set():
            total, n = 0, 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    total += p.memory_info().rss
                    n += 1
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            if total > self.peak:
                self.peak, self.peak_procs = total, n
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join()


def run(ctx: Context, cores: int = 2) -> list[Result]:
    import yaml

    work = Path(tempfile.mkdtemp(prefix="unlearnflow_e2e_"))
    snapshot(work)
    cmd = [str(SNAKEMAKE)]
    if ctx.quick:
        (work / "quick.yaml").write_text(yaml.safe_dump(QUICK, sort_keys=False))
        cmd += [*QUICK_TARGETS, "--configfile", str(work / "quick.yaml")]
    cmd += ["--snakefile", str(work / "Snakefile"), "--directory", str(work), "--cores", str(cores)]
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", OMP_WAIT_POLICY="PASSIVE")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    log = work / "e2e.log"
    ctx.log(f"    end_to_end: {' '.join(cmd)}  (log: {log})")
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT)
        mon = PeakRSS(proc.pid)
        mon.start()
        rc = proc.wait()
        wall = time.perf_counter() - t0
        mon.stop()
    text = log.read_text()
    steps = re.findall(r"(\d+) of (\d+) steps \(100%\) done", text)
    done = f"{steps[-1][0]} jobs" if steps else "? jobs"
    tables = sorted(p.name for p in (work / "results" / "tables").glob("*")) if (work / "results" / "tables").exists() else []
    name = "end_to_end" + ("_quick" if ctx.quick else "")
    if rc != 0:
        return [
            Result(
                name,
                f"snakemake failed (rc {rc}) after {wall:.0f} s; log and work dir kept in {work}",
                "< 15 min on 2 cores",
                status="FAIL",
                details=text.strip().splitlines()[-15:],
            )
        ]
    # the jobs' start-up, from this run's logs and benchmark files
    import job_overhead

    try:
        overhead = job_overhead.results_for(work / "results", name="end_to_end_job_overhead")
    except Exception as exc:  # a run without stage logs: say so, keep the timing
        overhead = [Result("end_to_end_job_overhead", f"not read: {exc}", "", status="SKIP")]
    if os.environ.get("UNLEARNFLOW_KEEP_E2E") != "1":
        shutil.rmtree(work, ignore_errors=True)
        where = "work dir removed"
    else:
        where = f"work dir kept: {work}"
    return [
        Result(
            name,
            f"{done} in {wall / 60:.1f} min wall, peak RSS of the process tree {fmt_bytes(mon.peak)} "
            f"({mon.peak_procs} processes at the peak), {cores} cores",
            "< 15 min on 2 cores",
            wall / LIMIT_S,
            1.0,
            status="SMOKE" if ctx.quick else None,
            details=[f"tables: {', '.join(tables) or 'none'}", where]
            + (["quick: a tiny config override and the CLIP table only (end_to_end.py QUICK); no verdict"] if ctx.quick else []),
        ),
        *overhead,
    ]
