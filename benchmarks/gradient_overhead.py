"""Gradient stage against a bare forward+backward loop, side by side.

    .venv/bin/python benchmarks/gradient_overhead.py [--repeats 5]
    (or: .venv/bin/python benchmarks/run.py --only gradient_overhead)

Each comparison is interleaved (bare, stage, bare, stage, ...); the ratio
is the median over repeats of stage time / bare time (= bare throughput /
stage throughput; target: overhead <= 10 %, ratio <= 1.10), in this
process's CPU time (on a shared machine the stable measure of the work; the
wall-clock samples/s and ratio are printed beside it):

- ``gradient_pass``: the same pre-decoded batches of the forget set through
  ``accumulate_gradients`` and through a loop that only does forward, loss
  and backward (zeroing the gradients each batch, keeping nothing): what the
  stage adds to the arithmetic (accumulation, bookkeeping, the final mean);
- ``gradient_stage_forget`` / ``gradient_stage_retain``: the stage after the
  model is loaded (``set_gradients``: decode the tar, the pass, the norms,
  the safetensors file) against the bare loop over the same tar (decoding
  included), on the target's forget set (cosine loss) and retain set
  (contrastive loss). The file (one fp32 tensor per parameter) is a fixed
  cost, so the smaller set shows the larger overhead.

Without the default DAG's model, a random-init tiny CLIP and random batches
are used (the ``gradient_stage_*`` rows are then skipped).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from benchlib import Context, Result, interleaved, median


def _bundle(ctx: Context):
    import open_clip

    from unlearnflow.models.clip import load_clip, resolve_device, save_clip, tiny_config

    model_dir = ctx.model_dir
    real = (model_dir / "open_clip_model.safetensors").exists()
    if not real:
        model_dir = Path(tempfile.mkdtemp()) / "tiny"
        cfg = tiny_config()
        save_clip(open_clip.CLIP(**cfg), cfg, model_dir, {"source": "benchmark"})
    return load_clip(model_dir, device=resolve_device(ctx.device)), real


def bare_loop(bundle, batches, loss="cosine"):
    """What any training script does: forward, loss, backward; nothing kept."""
    import torch

    from unlearnflow.gradients import set_loss
    from unlearnflow.models.clip import normalise

    model = bundle.model
    dev = bundle.device
    model.eval()
    for images, tokens in batches:
        model.zero_grad(set_to_none=True)
        img = model.encode_image(normalise(images.to(dev)))
        txt = model.encode_text(tokens.to(dev))
        set_loss(loss, img, txt, model.logit_scale).backward()
    model.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()


def stage_loop(bundle, batches, loss="cosine"):
    import torch

    from unlearnflow.gradients import accumulate_gradients

    accumulate_gradients(bundle, batches, loss, progress=False)
    if bundle.device.type == "cuda":
        torch.cuda.synchronize()


def run(ctx: Context, batch_size: int = 64) -> list[Result]:
    import torch

    from unlearnflow.gradients import iter_batches, set_gradients

    torch.set_num_threads(ctx.threads)
    bundle, real = _bundle(ctx)
    tar = ctx.results / "data" / ctx.target / "forget.tar"
    if real and tar.exists():
        batches = list(iter_batches(tar, bundle, batch_size))
    else:
        size = bundle.model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        gen = torch.Generator().manual_seed(0)
        batches = [
            (
                torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=gen),
                bundle.tokenizer(["a photo of something"] * batch_size),
            )
            for _ in range(4)
        ]
    n = sum(len(b[0]) for b in batches)
    repeats = 2 if ctx.quick else max(5, ctx.repeats)
    t = interleaved(
        {"bare": lambda: bare_loop(bundle, batches), "stage": lambda: stage_loop(bundle, batches)},
        repeats,
        warmup=True,
    )
    bare, stage = median(t["bare"]), median(t["stage"])
    out = [
        Result(
            "gradient_pass",
            f"stage {n / stage:.0f} vs bare {n / bare:.0f} samples/s wall ({n} samples, {len(batches)} batches, "
            f"median of {repeats}, {bundle.device}); {t.both('stage', 'bare')}",
            "overhead <= 10%",
            t.ratio("stage", "bare"),
            1.10,
            details=[f"bare  fwd+bwd: {t.show('bare')}", f"stage accumulate_gradients: {t.show('stage')}"],
        )
    ]
    if not (real and tar.exists()):
        out.append(Result("gradient_stage", "skipped: no model/sets (run `make run`)", "overhead <= 10%", status="SKIP"))
        return out
    tmp = Path(tempfile.mkdtemp())
    for which, loss in (("forget", "cosine"), ("retain", "contrastive")):
        set_tar = ctx.results / "data" / ctx.target / f"{which}.tar"
        if not set_tar.exists():
            continue
        n_set = sum(len(b[0]) for b in iter_batches(set_tar, bundle, batch_size))

        def stage_file(set_tar=set_tar, which=which, loss=loss):
            set_gradients(bundle, set_tar, tmp / f"{which}.safetensors", which=which, loss=loss, batch_size=batch_size)

        def bare_tar(set_tar=set_tar, loss=loss):
            bare_loop(bundle, iter_batches(set_tar, bundle, batch_size), loss)

        t = interleaved({"bare": bare_tar, "stage": stage_file}, repeats, warmup=True)
        bare, stage = median(t["bare"]), median(t["stage"])
        out.append(
            Result(
                f"gradient_stage_{which}",
                f"stage {n_set / stage:.0f} vs bare {n_set / bare:.0f} samples/s wall ({which} set, {n_set} samples, {loss}; "
                f"tar decoding included; the stage also writes {(tmp / f'{which}.safetensors').stat().st_size / 2**20:.1f} MiB); "
                f"{t.both('stage', 'bare')}",
                "overhead <= 10%",
                t.ratio("stage", "bare"),
                1.10,
                details=[f"bare  decode+fwd+bwd: {t.show('bare')}", f"stage set_gradients (tar -> norms -> file): {t.show('stage')}"],
            )
        )
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(Context.results))
    ap.add_argument("--target", default=Context.target)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    ctx = Context(results=Path(args.results), target=args.target, repeats=args.repeats, device=args.device, threads=args.threads)
    from benchlib import table

    print(table(run(ctx)))


if __name__ == "__main__":
    main()
