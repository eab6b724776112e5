"""What every benchmark of the suite shares: paths, the result record, timing.

A benchmark module defines ``run(ctx: Context) -> list[Result]``; ``run.py``
calls them in one process and prints one summary table. Each result is a
ratio compared with a limit on that ratio (``ratio <= limit`` passes):
measured/bare for overheads, probe/full evaluation for the search,
SLUG/baseline for costs, seconds/limit for absolute times.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# torch's OpenMP threads busy-wait by default (the stages set this too, in
# workflow/scripts/stage.py): set before anything imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))


@dataclass
class Result:
    name: str
    measured: str  # the raw figures, with units
    target: str  # the target as the issue states it
    ratio: float | None = None  # the compared quantity (None: informational)
    limit: float | None = None  # passes when ratio <= limit
    status: str | None = None  # overrides PASS/FAIL: "INFO", "SKIP", "SMOKE"
    details: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.status:
            return self.status
        if self.ratio is None or self.limit is None:
            return "INFO"
        return "PASS" if self.ratio <= self.limit else "FAIL"


@dataclass
class Context:
    results: Path = REPO / "results"
    model: str = "tiny_clip"
    target: str = "mira_castell"
    threads: int = 2
    repeats: int = 3
    quick: bool = False
    device: str = "cpu"
    log: callable = print

    @property
    def model_dir(self) -> Path:
        return self.results / "models" / self.model

    def target_config(self) -> dict:
        cfg = load_config()
        for t in cfg["targets"]:
            if t["id"] == self.target:
                return t
        raise SystemExit(f"target {self.target!r} is not in config.yaml; known: {[t['id'] for t in cfg['targets']]}")

    def need(self, *paths: Path) -> None:
        missing = [str(p) for p in paths if not Path(p).exists()]
        if missing:
            raise MissingInputs(f"missing {missing[:3]}: run `make run` (the default DAG) first")


class MissingInputs(RuntimeError):
    """The default DAG's results that a benchmark reads are not there."""


def load_config() -> dict:
    import yaml

    with open(REPO / "config.yaml") as f:
        return yaml.safe_load(f)


class Times(dict):
    """name -> list of wall seconds (the dict itself), plus ``cpu``: name ->
    list of this process's CPU seconds (all its threads) for the same calls."""

    def __init__(self, names):
        super().__init__({k: [] for k in names})
        self.cpu = {k: [] for k in names}

    def ratio(self, a: str, b: str, cpu: bool = True) -> float:
        """Median over repeats of a_i / b_i (the calls of one repeat ran
        back to back, so each pair saw about the same load)."""
        src = self.cpu if cpu else self
        return median([x / y for x, y in zip(src[a], src[b])])

    def both(self, a: str, b: str) -> str:
        return f"CPU-time ratio {self.ratio(a, b):.3f}, wall-clock ratio {self.ratio(a, b, cpu=False):.3f}"

    def show(self, k: str) -> str:
        return (
            f"wall {', '.join(f'{x:.2f}' for x in self[k])} s; "
            f"CPU {', '.join(f'{x:.2f}' for x in self.cpu[k])} s"
        )


def interleaved(fns: dict, repeats: int, warmup: bool = False) -> Times:
    """Wall and CPU seconds of each function, run in turn ``repeats`` times,
    so that load from other processes drifts over both sides of a ratio alike.

    On a machine shared with other jobs, the CPU time of this process is the
    stable measure of the work a side does (the wall clock also counts the
    time other processes held the cores); both are kept."""
    if warmup:
        for fn in fns.values():
            fn()
    times = Times(fns)
    for _ in range(repeats):
        for k, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
            times.cpu[k].append(time.process_time() - c0)
    return times


def median(xs) -> float:
    return statistics.median(xs)


def spread(xs) -> str:
    return f"median of {len(xs)}: {median(xs):.3g} s (min {min(xs):.3g}, max {max(xs):.3g})"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def table(results: list[Result]) -> str:
    rows = [("name", "measured", "target", "ratio", "limit", "result")]
    for r in results:
        rows.append(
            (
                r.name,
                r.measured,
                r.target,
                "" if r.ratio is None else f"{r.ratio:.3g}",
                "" if r.limit is None else f"<= {r.limit:g}",
                r.verdict,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for j, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if j == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine() -> str:
    import platform

    try:
        load = os.getloadavg()
        load_s = f"load average {load[0]:.2f} (1 min) / {load[2]:.2f} (15 min)"
    except OSError:
        load_s = "load unknown"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.node()}: {cores} CPU cores, {platform.machine()}, Python {platform.python_version()}, {load_s}"
