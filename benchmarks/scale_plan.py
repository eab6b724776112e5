"""Scale plan: gradient file sizes and the gradient stage's memory for real CLIPs.

    .venv/bin/python benchmarks/run.py --only scale_plan [--batch-size 64]

Computed, not measured on the models (no download, no GPU needed): each
open_clip architecture is instantiated on the ``meta`` device (shapes only,
no memory), which gives

- P, the parameter count, and P_c, the parameters of SLUG's candidate
  layers (``unlearnflow.gradients.candidate_names``: the layer analysis's
  default filter; what ``gradients.keep: candidates`` stores);
- the bytes of the two gradient files (forget + retain, fp32: 2 x 4 P; with
  ``keep: candidates`` 2 x 4 P_c), the header aside;
- the activations the backward pass keeps for one batch: one forward of the
  forget loss on meta tensors under ``saved_tensors_hooks``, summing every
  saved tensor that is not a parameter (or a view of one); an upper bound
  (on meta, two views of one buffer count twice: +12 % on ViT-B-32 at
  batch 2 against the same count on real CPU tensors);
- the gradient stage's memory: on the device weights (4 P) + accumulated
  gradients (4 P, or 4 P_c) + the activations of one batch; on the host, at
  the end, the gradients' CPU copy and safetensors' serialisation buffer
  (2 x 4 P) -- on a CPU-only run both on the one host.
"""

from __future__ import annotations

import logging

from benchlib import Context, Result, fmt_bytes

ARCHS = ("ViT-B-32", "ViT-L-14", "ViT-H-14")


def _meta_model(arch: str | None):
    import open_clip
    import torch

    logging.getLogger().setLevel(logging.ERROR)  # "No pretrained weights loaded"
    with torch.device("meta"):
        if arch is None:
            from unlearnflow.models.clip import tiny_config

            return open_clip.CLIP(**tiny_config())
        return open_clip.create_model(arch, pretrained=None, device="meta")


def activation_bytes(model, batch: int, loss: str = "cosine") -> int:
    """Bytes autograd keeps for backward after one forward of ``loss`` (meta tensors)."""
    import torch

    from unlearnflow.gradients import set_loss

    model.eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    ctx_len = int(getattr(model, "context_length", 77))
    seen: dict[int, int] = {}

    def pack(t):
        base = t._base if t._base is not None else t
        if not (base.is_leaf and base.requires_grad):  # parameters are counted as weights
            seen[id(t)] = t.numel() * t.element_size()
        return t

    x = torch.zeros(batch, 3, size, size, device="meta")
    tokens = torch.zeros(batch, ctx_len, dtype=torch.long, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        set_loss(loss, model.encode_image(x), model.encode_text(tokens), model.logit_scale)
    return sum(seen.values())


def plan(arch: str | None, batch: int) -> dict:
    from unlearnflow.gradients import candidate_names

    model = _meta_model(arch)
    params = dict(model.named_parameters())
    P = sum(p.numel() for p in params.values())
    cands = candidate_names(model)
    Pc = sum(params[n].numel() for n in cands)
    act = activation_bytes(model, batch)
    act1 = activation_bytes(model, 1)
    return {
        "model": arch or "tiny_clip (default)",
        "params": P,
        "tensors": len(params),
        "candidate_params": Pc,
        "candidate_tensors": len(cands),
        "files_all": 2 * 4 * P,
        "files_candidates": 2 * 4 * Pc,
        "activations": act,
        "activations_per_sample": act1,
        "device_all": 4 * P + 4 * P + act,
        "device_candidates": 4 * P + 4 * Pc + act,
        "host_at_save_all": 2 * 4 * P,
        "host_at_save_candidates": 2 * 4 * Pc,
        "cpu_only_all": 4 * P + 4 * P + act + 4 * P,
        "batch": batch,
    }


def markdown(rows: list[dict]) -> str:
    head = (
        "| model | parameters (tensors) | candidate parameters (tensors) | forget + retain files, keep: all | keep: candidates "
        f"| activations, batch {rows[0]['batch']} (per sample) | gradient stage on the GPU: all / candidates | host RAM at the save | CPU-only run, peak |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.1f} M ({r['tensors']}) | {r['candidate_params'] / 1e6:.1f} M "
            f"({r['candidate_tensors']}, {100 * r['candidate_params'] / r['params']:.0f} %) | {fmt_bytes(r['files_all'])} "
            f"| {fmt_bytes(r['files_candidates'])} | {fmt_bytes(r['activations'])} ({fmt_bytes(r['activations_per_sample'])}) "
            f"| {fmt_bytes(r['device_all'])} / {fmt_bytes(r['device_candidates'])} | {fmt_bytes(r['host_at_save_all'])} "
            f"| {fmt_bytes(r['cpu_only_all'])} |"
        )
    return "\n".join(lines)


def run(ctx: Context, batch: int = 64) -> list[Result]:
    rows = [plan(None, batch)] + [plan(a, batch) for a in ARCHS]
    ctx.log(markdown(rows))
    return [
        Result(
            f"scale_plan {r['model'].split()[0]}",
            f"{r['params'] / 1e6:.1f} M params: grad files {fmt_bytes(r['files_all'])} "
            f"(candidates only {fmt_bytes(r['files_candidates'])}); stage on GPU {fmt_bytes(r['device_all'])} at batch {batch}",
            "(table in docs/performance.md)",
            status="INFO",
        )
        for r in rows
    ]
