"""SLUG's cost per target when one retain pass serves every target.

    .venv/bin/python benchmarks/run.py --only shared_retain [--repeats 3]

With ``selection.shared_retain: true`` (opt-in) the retain set names none of
the configured targets, so its gradient is one pass per model
(``results/grads/MODEL/shared/retain.safetensors``) that every target's
layer analysis reads. Measured here, in this process, on the default DAG's
model and sets (medians of interleaved repeats, CPU seconds): SLUG's parts
(forget pass, retain pass, layer analysis, search). SLUG's cost per target
for N targets is then forget + analysis + search + retain / N (shared)
against forget + analysis + search + retain (a retain pass per target, the
same size), for N = 1, 4, 16: arithmetic on the measured parts, the DAG
running one retain job instead of N.
"""

from __future__ import annotations

import shutil

from benchlib import Context, Result, median
from slug_cost import Runner

TARGET_COUNTS = (1, 4, 16)


def run(ctx: Context) -> list[Result]:
    r = Runner(ctx)
    repeats = 1 if ctx.quick else ctx.repeats
    clocks = [r.timed("slug") for _ in range(repeats)]
    shutil.rmtree(r.tmp, ignore_errors=True)
    part = {k: median([c.cpu[k] for c in clocks]) for k in clocks[0].cpu if k != "total"}
    retain = part["retain gradients"]
    rest = sum(v for k, v in part.items() if k != "retain gradients")
    out = []
    for n in TARGET_COUNTS:
        shared, own = rest + retain / n, rest + retain
        out.append(
            Result(
                f"shared_retain_{n}_targets",
                f"SLUG per target {shared:.2f} s CPU with one retain pass for {n} target(s) vs {own:.2f} s "
                f"with one per target (retain pass {retain:.2f} s, the rest {rest:.2f} s)",
                "(amortised cost)",
                shared / own,
                status="INFO",
                details=["parts (CPU s, median of %d): " % repeats + ", ".join(f"{k} {v:.2f}" for k, v in part.items()),
                         f"retain set: {r.retain}"] if n == TARGET_COUNTS[0] else [],
            )
        )
    return out
