"""The gradient stage of a ViT-B-32-sized CLIP on a CUDA GPU, against a bare loop.

    .venv/bin/python benchmarks/run.py --only gpu_gradients [--gpu-batches 8]

Whenever CUDA is available: a random-init open_clip ViT-B-32
(``pretrained=None``: nothing downloaded), synthetic batches (uint8 images
at the model's size, random token ids), the stage's
``accumulate_gradients`` against a bare forward+backward loop over the same
batches, interleaved, medians; samples/s and peak GPU memory
(``torch.cuda.max_memory_allocated``) of each. Target: overhead <= 10 %,
in wall-clock time (CUDA-synchronised; CPU time says nothing of GPU work).
Without CUDA it reports "skipped: no CUDA".

``--gpu-device cpu --gpu-arch tiny`` runs the same code on the CPU with the
tiny default model (to check the benchmark itself on a machine without a GPU).
"""

from __future__ import annotations

from benchlib import Context, Result, fmt_bytes, interleaved, median


class _Bundle:
    """What accumulate_gradients needs of a ClipBundle."""

    def __init__(self, model):
        self.model = model

    @property
    def device(self):
        return next(self.model.parameters()).device


def _model(arch: str, device):
    import logging

    import open_clip

    logging.getLogger().setLevel(logging.ERROR)  # "No pretrained weights loaded"
    if arch == "tiny":
        from unlearnflow.models.clip import tiny_config

        return open_clip.CLIP(**tiny_config()).to(device)
    return open_clip.create_model(arch, pretrained=None, device=device)


def run(ctx: Context, arch: str = "ViT-B-32", device: str = "cuda", batch_size: int = 64, n_batches: int = 8) -> list[Result]:
    import torch

    from gradient_overhead import bare_loop, stage_loop

    name = f"gpu_gradients {arch}"
    if device == "cuda" and not torch.cuda.is_available():
        return [Result(name, "skipped: no CUDA", "overhead <= 10%", status="SKIP")]
    torch.set_num_threads(ctx.threads)
    dev = torch.device(device)
    torch.manual_seed(0)
    model = _model(arch, dev)
    bundle = _Bundle(model)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    ctx_len = int(getattr(model, "context_length", 77))
    vocab = int(getattr(model, "vocab_size", 49408))
    n_batches = 2 if ctx.quick else n_batches
    gen = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=gen),
            torch.randint(1, vocab, (batch_size, ctx_len), generator=gen),
        )
        for _ in range(n_batches)
    ]
    if dev.type == "cuda":  # on the device already: the loops then time compute only
        batches = [(x.to(dev), t.to(dev)) for x, t in batches]
    peaks = {}

    def measured(key, fn):
        def call():
            if dev.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            fn(bundle, batches)
            if dev.type == "cuda":
                torch.cuda.synchronize()
                peaks[key] = max(peaks.get(key, 0), torch.cuda.max_memory_allocated())

        return call

    repeats = 2 if ctx.quick else max(3, ctx.repeats)
    t = interleaved({"bare": measured("bare", bare_loop), "stage": measured("stage", stage_loop)}, repeats, warmup=True)
    n = batch_size * n_batches
    bare, stage = median(t["bare"]), median(t["stage"])
    mem = (
        f"; peak GPU memory stage {fmt_bytes(peaks['stage'])} vs bare {fmt_bytes(peaks['bare'])}"
        if peaks
        else ""
    )
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return [
        Result(
            name,
            f"stage {n / stage:.0f} vs bare {n / bare:.0f} samples/s on {gpu} (batch {batch_size} x {n_batches}, "
            f"median of {repeats}){mem}",
            "overhead <= 10%",
            t.ratio("stage", "bare", cpu=False),
            1.10,
            details=[f"bare: {', '.join(f'{x:.3f}' for x in t['bare'])} s", f"stage: {', '.join(f'{x:.3f}' for x in t['stage'])} s"],
        )
    ]
