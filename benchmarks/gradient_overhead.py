"""Gradient stage against a bare forward+backward loop, side by side.

    .venv/bin/python benchmarks/gradient_overhead.py [--model-dir results/models/tiny_clip]
        [--tar results/data/mira_castell/forget.tar] [--repeats 3] [--device auto]

Both loops see the same pre-decoded batches, so the ratio isolates what the
stage adds (accumulation, bookkeeping) from data loading. Without a model
folder, a random-init tiny CLIP and random batches are used. Target:
overhead <= 10 %.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from unlearnflow.gradients import accumulate_gradients, iter_batches, set_loss  # noqa: E402
from unlearnflow.models.clip import load_clip, normalise, resolve_device, save_clip, tiny_config  # noqa: E402


def bare_loop(bundle, batches):
    """What any training script does: forward, loss, backward; nothing kept."""
    model = bundle.model
    dev = bundle.device
    for images, tokens in batches:
        model.zero_grad(set_to_none=True)
        img = model.encode_image(normalise(images.to(dev)))
        txt = model.encode_text(tokens.to(dev))
        set_loss("cosine", img, txt, model.logit_scale).backward()
    model.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()


def stage_loop(bundle, batches):
    accumulate_gradients(bundle, batches, "cosine", progress=False)
    if bundle.device.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default=str(REPO / "results/models/tiny_clip"))
    ap.add_argument("--tar", default=str(REPO / "results/data/mira_castell/forget.tar"))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    model_dir = Path(args.model_dir)
    if not (model_dir / "open_clip_model.safetensors").exists():
        import open_clip

        model_dir = Path(tempfile.mkdtemp()) / "tiny"
        cfg = tiny_config()
        save_clip(open_clip.CLIP(**cfg), cfg, model_dir, {"source": "benchmark"})
    bundle = load_clip(model_dir, device=dev)
    if Path(args.tar).exists():
        batches = list(iter_batches(args.tar, bundle, args.batch_size))
    else:
        size = bundle.model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        batches = [
            (torch.randint(0, 256, (args.batch_size, 3, size, size), dtype=torch.uint8), bundle.tokenizer(["a photo"] * args.batch_size))
            for _ in range(4)
        ]
    n = sum(len(b[0]) for b in batches)
    stage_loop(bundle, batches[:1])  # warm-up (allocator, kernels)
    times = {"bare": [], "stage": []}
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        for name, fn in (("bare", bare_loop), ("stage", stage_loop)):
            t0 = time.perf_counter()
            fn(bundle, batches)
            times[name].append(time.perf_counter() - t0)
    bare, stage = statistics.median(times["bare"]), statistics.median(times["stage"])
    print(f"device {dev}, {n} samples in {len(batches)} batches, median of {args.repeats}")
    print(f"bare forward+backward: {n / bare:9.1f} samples/s")
    print(f"gradient stage:        {n / stage:9.1f} samples/s")
    print(f"overhead: {stage / bare - 1:+.1%} (target <= +10%)")


if __name__ == "__main__":
    main()
