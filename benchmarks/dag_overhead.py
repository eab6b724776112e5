"""Pipeline overhead: a no-op rerun of the default DAG, and no torch in the DAG build.

    .venv/bin/python benchmarks/run.py --only dag_overhead

On the repo's own results/ (nothing is written there):

- ``dag_dryrun_noop``: wall time of ``snakemake -n`` when everything is up
  to date (median of repeats);
- ``dag_real_noop``: wall time of a real ``snakemake --cores 2`` no-op run,
  only if the dry run said "Nothing to be done" just before (if jobs are
  scheduled, the real run is not made and the result says so). It runs with
  ``--nolock`` so that it neither waits for nor blocks another Snakemake in
  the same checkout (a no-op run writes nothing either way);
- ``dag_no_torch``: ``python -X importtime -m snakemake -n``: no module of
  torch (nor open_clip) is imported while the Snakefile is parsed and the
  DAG built.

Target: each no-op under 3 s of wall time (the verdict); the commands'
CPU seconds (user + sys, from the children's rusage) are printed beside,
since on a machine shared with other jobs the wall clock also counts the
time they held the cores. Snakemake imports every installed executor
plugin at start-up; the SLURM plugin runs ``scontrol show config`` then (a
10 s timeout): on a machine where Slurm is installed but its controller is
down, that alone stalls every Snakemake command. Each row is therefore also
measured with a ``scontrol`` that fails at once on PATH ("no Slurm"), and
the plain ``import snakemake`` time is given for scale.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO, Context, Result, median

SNAKEMAKE = Path(sys.executable).parent / "snakemake"
NOTHING = "Nothing to be done"


_SHIM: list[Path] = []  # the folder of the failing scontrol, made once per run


def _env(no_slurm: bool) -> dict:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    if no_slurm:
        if not _SHIM:
            shim = Path(tempfile.mkdtemp(prefix="noslurm_"))
            (shim / "scontrol").write_text("#!/bin/sh\nexit 1\n")
            (shim / "scontrol").chmod(0o755)
            _SHIM.append(shim)
        env["PATH"] = f"{_SHIM[0]}:{env.get('PATH', '')}"
    return env


CPU: list[float] = []  # CPU seconds (user + sys) of each command _timed ran, in order


def _timed(cmd: list[str], env: dict, cwd: Path = REPO) -> tuple[float, str, int]:
    """Wall seconds, output, return code; the command's CPU seconds go to CPU."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
    return wall, p.stdout + p.stderr, p.returncode


def _cpu_since(n: int) -> str:
    return f"CPU {median(CPU[n:]):.2f} s" if len(CPU) > n else ""


def _scheduled(out: str) -> str:
    m = re.search(r"^total\s+(\d+)", out, re.M)
    return f"{m.group(1)} jobs scheduled" if m else "jobs scheduled"


def run(ctx: Context, targets: list[str] | None = None) -> list[Result]:
    """``targets``: files to ask for instead of the default target ``all``
    (e.g. the CLIP tables while other parts of the DAG are still unbuilt);
    the rows then say so."""
    repeats = 2 if ctx.quick else max(3, ctx.repeats)
    targets = list(targets or [])
    scope = f" [{len(targets)} target files, not `all`]" if targets else ""
    out: list[Result] = []
    scontrol = shutil.which("scontrol")
    probe_s = None
    if scontrol:
        t0 = time.perf_counter()
        try:
            subprocess.run(["scontrol", "show", "config"], capture_output=True, timeout=15)
        except subprocess.TimeoutExpired:
            pass
        probe_s = time.perf_counter() - t0
    n0 = len(CPU)
    imp = [_timed([sys.executable, "-c", "import snakemake.cli, snakemake.api"], _env(True))[0] for _ in range(repeats)]
    common = [
        f"`import snakemake.cli, snakemake.api` alone: {median(imp):.2f} s wall, {_cpu_since(n0)}",
        "`scontrol show config` (run by the SLURM plugin at import): "
        + (f"{probe_s:.2f} s ({scontrol})" if scontrol else "no scontrol on PATH"),
    ]
    for no_slurm in (False, True):
        env = _env(no_slurm)
        suffix = "" if not no_slurm else " (no Slurm)"
        label = "" if not no_slurm else "_no_slurm"
        dry = []
        nothing = True
        text = ""
        n0 = len(CPU)
        for _ in range(repeats):
            s, text, rc = _timed([str(SNAKEMAKE), *targets, "-n", "--quiet"], env)
            dry.append(s)
            nothing = nothing and rc == 0 and NOTHING in text
        dry_cpu = _cpu_since(n0)
        if rc != 0:
            out.append(Result(f"dag_dryrun_noop{label}", f"snakemake -n failed (rc {rc}): {text.strip()[-200:]}", "< 3 s", status="FAIL"))
            continue
        out.append(
            Result(
                f"dag_dryrun_noop{label}",
                f"snakemake -n{suffix}{scope}: {median(dry):.2f} s wall ({dry_cpu}; median of {repeats})"
                + ("" if nothing else f"; NOT a no-op: {_scheduled(text)}"),
                "< 3 s",
                median(dry) / 3.0,
                1.0,
                status=None if nothing else "SKIP",
                details=[f"runs: {', '.join(f'{x:.2f}' for x in dry)} s"]
                + (common if not no_slurm else [])
                + ([f"targets: {' '.join(targets)}"] if targets and not no_slurm else []),
            )
        )
        if not nothing:
            out.append(
                Result(
                    f"dag_real_noop{label}",
                    f"not run: the dry run schedules jobs ({_scheduled(text)}); a real run would execute them",
                    "< 3 s",
                    status="SKIP",
                )
            )
            continue
        real, real_cpu = [], []
        for _ in range(repeats):
            s0, text, rc = _timed([str(SNAKEMAKE), *targets, "-n", "--quiet"], env) if real else (0, NOTHING, 0)
            if rc != 0 or NOTHING not in text:  # something changed meanwhile: stop
                break
            s, text, rc = _timed([str(SNAKEMAKE), *targets, "--cores", "2", "--nolock", "--quiet"], env)
            if rc != 0:
                break
            real.append(s)
            real_cpu.append(CPU[-1])
        if not real:
            out.append(Result(f"dag_real_noop{label}", f"failed or no longer a no-op: {text.strip()[-200:]}", "< 3 s", status="FAIL"))
            continue
        out.append(
            Result(
                f"dag_real_noop{label}",
                f"snakemake --cores 2{suffix}{scope}: {median(real):.2f} s wall (CPU {median(real_cpu):.2f} s; median of {len(real)})",
                "< 3 s",
                median(real) / 3.0,
                1.0,
                details=[f"runs: {', '.join(f'{x:.2f}' for x in real)} s"],
            )
        )
    # torch in the DAG build?
    s, text, rc = _timed([sys.executable, "-X", "importtime", "-m", "snakemake", "-n", "--quiet"], _env(True))
    mods = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", text, re.M))
    heavy = sorted(m for m in mods if m.split(".")[0] in ("torch", "open_clip", "torchvision", "diffusers", "transformers"))
    out.append(
        Result(
            "dag_no_torch",
            f"{len(mods)} modules imported by snakemake -n; torch/open_clip/diffusers/transformers among them: "
            + (", ".join(heavy[:5]) + f" ({len(heavy)})" if heavy else "none"),
            "the DAG build imports no torch",
            float(len(heavy)),
            0.0,
            status=None if rc == 0 else "FAIL",
        )
    )
    while _SHIM:
        shutil.rmtree(_SHIM.pop(), ignore_errors=True)
    return out
