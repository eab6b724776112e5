"""OpenMP's wait policy for a job of one thread and of two.

    .venv/bin/python benchmarks/run.py --only omp_wait

workflow/scripts/stage.py sets ``OMP_WAIT_POLICY=PASSIVE`` for one-thread
jobs only (busy-waiting threads slowed a job beside them 13x) and leaves a
job given several threads to OpenMP's default of spinning. This measures
why: training steps of the text-to-image UNet (``configs/t2i_wide.yaml``'s
widths, batch 32, random tensors: what ``pretrain_t2i`` runs) in a fresh
process per policy (the policy is read when torch starts), the two policies
interleaved ``repeats`` times.

Targets: at 2 threads, ACTIVE / PASSIVE seconds per step <= 0.8 (spinning is
worth it where the job owns the cores); at 1 thread, informational (~1: the
policy does not matter there, so PASSIVE costs a one-thread job nothing).
"""

from __future__ import annotations

import os
import subprocess
import sys

from benchlib import REPO, Context, Result, median

STEPS, WARMUP = 20, 3
SCRIPT = f"""
import sys, time, torch
sys.path.insert(0, {str(REPO / "src")!r})
from diffusers import UNet2DConditionModel
from unlearnflow.models.diffusion import TINY_UNET
torch.manual_seed(0)
unet = UNet2DConditionModel(**{{**TINY_UNET, "block_out_channels": [48, 64, 96]}})
opt = torch.optim.AdamW(unet.parameters(), 1e-3)
c = TINY_UNET["in_channels"]
x, ctx, t = torch.randn(32, c, 16, 16), torch.randn(32, 16, 64), torch.randint(0, 1000, (32,))
for i in range({STEPS + WARMUP}):
    if i == {WARMUP}:
        t0 = time.perf_counter()
    loss = (unet(x, t, encoder_hidden_states=ctx).sample - x).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
print((time.perf_counter() - t0) / {STEPS})
"""


def step_seconds(policy: str, threads: int) -> float:
    env = {**os.environ, "OMP_WAIT_POLICY": policy, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run(ctx: Context) -> list[Result]:
    results = []
    for threads, limit in ((2, 0.8), (1, None)):
        t = {"PASSIVE": [], "ACTIVE": []}
        for _ in range(1 if ctx.quick else ctx.repeats):
            for policy in t:
                t[policy].append(step_seconds(policy, threads))
        ratio = median([a / p for a, p in zip(t["ACTIVE"], t["PASSIVE"])])
        results.append(
            Result(
                f"omp_wait_{threads}_thread{'s' if threads > 1 else ''}",
                f"s/step ACTIVE {median(t['ACTIVE']):.3f}, PASSIVE {median(t['PASSIVE']):.3f} (ratio {ratio:.2f})",
                "ACTIVE / PASSIVE <= 0.8" if limit else "informational (~1)",
                ratio,
                limit,
                details=[f"{p}: " + ", ".join(f"{x:.3f}" for x in xs) for p, xs in t.items()],
            )
        )
    return results
