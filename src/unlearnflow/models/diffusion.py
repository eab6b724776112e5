"""Text-to-image diffusion models: one folder layout, one loader, one sampler.

Every model is a folder of diffusers components, as ``save_pretrained``
writes them (``unet/``, ``scheduler/``, ``text_encoder/``, ``tokenizer/``,
optionally ``vae/``, plus ``model_index.json``) and our ``model.json``
(fingerprint, provenance):

- real path (``export_t2i``): ``DiffusionPipeline.from_pretrained`` on a model
  id or a local folder (Stable Diffusion 1.x / 2.x), components re-saved;
- embedded default (``pretrain_t2i``): a tiny pixel-space
  ``UNet2DConditionModel`` + DDPM scheduler, conditioned on the tiny CLIP's
  text tower converted to a transformers ``CLIPTextModel`` (weights mapped by
  :data:`open_clip_to_hf_names`, tokenizer rebuilt from open_clip's BPE), so
  the default is structurally Stable Diffusion without the VAE.

Because the text encoder is a transformers CLIP while SLUG's gradients and
deltas use open_clip's parameter names, :func:`open_clip_to_hf` maps between
them (open_clip's fused ``in_proj_weight`` is three HF tensors); a delta is
stored in open_clip names (SLUG's one tensor) and mapped when applied.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .. import layout
from ..io import InputFileError, UnlearnflowError, make_readable, read_json, write_json
from ..training import LossBar, lr_at, train_steps
from .clip import resolve_device

log = logging.getLogger(__name__)

INFO_NAME = layout.T2I_INFO  # unlearnflow.layout: the rules look for the same names
COMPONENTS = ("unet", "scheduler", "text_encoder", "tokenizer")

# The embedded default: ~1.4M parameters in pixel space, 32 px images seen
# as 16 x 16 x 12 (pixel_unshuffle by 2: lossless space-to-depth, so the
# noise is still i.i.d. per pixel). That and cross-attention-only blocks cut
# the CPU cost of a step ~5x against a 32 x 32 x 3 UNet, so training fits the
# ten-minute budget on 2 cores.
PIXEL_UNSHUFFLE = 2
TINY_UNET = {
    "sample_size": 16,
    "in_channels": 3 * PIXEL_UNSHUFFLE**2,
    "out_channels": 3 * PIXEL_UNSHUFFLE**2,
    "layers_per_block": 1,
    "block_out_channels": [32, 48, 64],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 64,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
    "only_cross_attention": True,
}
# Pixel space: clip predicted x0 to [-1, 1] (latent Stable Diffusion does
# not). The UNet predicts x0 ("sample"): a briefly trained x0-predictor gives
# smooth, class-conditional means where an epsilon-predictor leaves per-pixel
# noise at low t, and the classifiers only need the concept to show.
TINY_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "sample",
    "clip_sample": True,
    "steps_offset": 1,
}


# ------------------------------------------------------------ name mapping
_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_IN_BLOCK = {
    "ln_1.weight": ["layer_norm1.weight"],
    "ln_1.bias": ["layer_norm1.bias"],
    "ln_2.weight": ["layer_norm2.weight"],
    "ln_2.bias": ["layer_norm2.bias"],
    "attn.in_proj_weight": ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"],
    "attn.in_proj_bias": ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"],
    "attn.out_proj.weight": ["self_attn.out_proj.weight"],
    "attn.out_proj.bias": ["self_attn.out_proj.bias"],
    "mlp.c_fc.weight": ["mlp.fc1.weight"],
    "mlp.c_fc.bias": ["mlp.fc1.bias"],
    "mlp.c_proj.weight": ["mlp.fc2.weight"],
    "mlp.c_proj.bias": ["mlp.fc2.bias"],
}
_TOP = {
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_final.weight": "final_layer_norm.weight",
    "ln_final.bias": "final_layer_norm.bias",
}


def hf_prefix(text_encoder) -> str:
    """transformers 4 nests the encoder under ``text_model.``; 5 does not."""
    return "text_model." if any(n.startswith("text_model.") for n, _ in text_encoder.named_parameters()) else ""


def open_clip_to_hf_names(name: str, num_layers: int, prefix: str = "") -> list[str]:
    """The transformers CLIPTextModel tensors that hold an open_clip text
    parameter (several when open_clip fuses q, k, v). Raises for parameters the
    pipeline's text encoder does not use: the vision tower, the text
    projection and logit scale (Stable Diffusion conditions on the token
    states), or blocks beyond the encoder's depth (SD 2.x drops the last)."""
    if name in _TOP:
        return [prefix + _TOP[name]]
    m = _BLOCK.match(name)
    if m and m.group(2) in _IN_BLOCK:
        i = int(m.group(1))
        if i >= num_layers:
            raise UnlearnflowError(
                f"{name}: block {i} is not used by the pipeline's text encoder ({num_layers} layers)"
            )
        return [f"{prefix}encoder.layers.{i}.{n}" for n in _IN_BLOCK[m.group(2)]]
    raise UnlearnflowError(
        f"{name}: not a parameter of the pipeline's text encoder (only open_clip text-tower "
        "parameters other than text_projection map to it)"
    )


def open_clip_to_hf(tensors: dict[str, torch.Tensor], num_layers: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """open_clip text-tower tensors -> transformers CLIPTextModel tensors."""
    out = {}
    for name, t in tensors.items():
        targets = open_clip_to_hf_names(name, num_layers, prefix)
        parts = t.chunk(len(targets), dim=0) if len(targets) > 1 else [t]
        for hf, part in zip(targets, parts):
            out[hf] = part.contiguous()
    return out


def maps_to_text_encoder(name: str, num_layers: int) -> bool:
    try:
        open_clip_to_hf_names(name, num_layers)
        return True
    except UnlearnflowError:
        return False


def hf_text_encoder_from_open_clip(clip_model, tokenizer):
    """A transformers CLIPTextModel + CLIPTokenizer equal to an open_clip
    text tower (causal, token states after ln_final)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    width = clip_model.token_embedding.weight.shape[1]
    blocks = clip_model.transformer.resblocks
    mlp = blocks[0].mlp.c_fc.weight.shape[0]
    act = blocks[0].mlp.gelu
    act_name = "quick_gelu" if type(act).__name__ == "QuickGELU" else "gelu"
    ctx = clip_model.positional_embedding.shape[0]
    cfg = CLIPTextConfig(
        vocab_size=clip_model.token_embedding.weight.shape[0],
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=len(blocks),
        num_attention_heads=blocks[0].attn.num_heads,
        max_position_embeddings=ctx,
        hidden_act=act_name,
        layer_norm_eps=clip_model.ln_final.eps,
        projection_dim=clip_model.text_projection.shape[1],
        bos_token_id=tokenizer.sot_token_id,
        eos_token_id=tokenizer.eot_token_id,
        pad_token_id=tokenizer.eot_token_id,
    )
    model = CLIPTextModel(cfg)
    text_names = [n for n, _ in clip_model.named_parameters() if maps_to_text_encoder(n, len(blocks))]
    state = dict(clip_model.named_parameters())
    mapped = open_clip_to_hf({n: state[n].detach() for n in text_names}, len(blocks), hf_prefix(model))
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    missing = [m for m in missing if "position_ids" not in m]
    if missing or unexpected:
        raise UnlearnflowError(f"text tower conversion: missing {missing}, unexpected {unexpected}")
    merges = [pair for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda kv: kv[1])]
    special = tokenizer.decoder[tokenizer.eot_token_id]
    hf_tok = CLIPTokenizer(
        vocab=dict(tokenizer.encoder),
        merges=merges,
        bos_token=tokenizer.decoder[tokenizer.sot_token_id],
        eos_token=special,
        pad_token=special,
        unk_token=special,
        model_max_length=ctx,
    )
    return model.eval(), hf_tok


# ------------------------------------------------------------ the bundle
@dataclass
class T2IBundle:
    """A loaded text-to-image model: diffusers components + what they need."""

    unet: torch.nn.Module
    scheduler: object  # the training (noise) scheduler
    text_encoder: torch.nn.Module
    tokenizer: object
    vae: torch.nn.Module | None
    model_dir: Path
    info: dict

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def text_layers(self) -> int:
        return int(self.text_encoder.config.num_hidden_layers)

    def tokens(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    def encode_prompts(self, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Token states (B, L, D) that the UNet cross-attends to."""
        out = []
        for i in range(0, len(prompts), batch_size):
            ids = self.tokens(prompts[i : i + batch_size]).to(self.device)
            out.append(self.text_encoder(ids).last_hidden_state)
        return torch.cat(out)

    @property
    def unshuffle(self) -> int:
        """Pixel-space models may denoise space-to-depth images (see TINY_UNET)."""
        return int(self.info.get("pixel_unshuffle", 1)) if self.vae is None else 1

    @property
    def image_size(self) -> int:
        return int(self.unet.config.sample_size) * (8 if self.vae is not None else self.unshuffle)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = self.unet.config
        return (int(c.in_channels), int(c.sample_size), int(c.sample_size))


def model_files(model_dir) -> dict:
    d = Path(model_dir)
    return {
        "info": d / INFO_NAME,
        "unet": d / layout.T2I_UNET,  # diffusers' save_pretrained names
        "text_encoder": d / layout.T2I_TEXT_ENCODER,
    }


def _fingerprint(files: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def save_t2i(components: dict, out_dir, info: dict) -> dict:
    """Write the components into a sibling temp folder, then move them in
    (model.json last), so a killed job leaves no folder that looks complete."""
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):  # of killed jobs (one job per output)
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    index = {"_class_name": info.get("pipeline_class", "UnlearnflowTextToImage"), "_diffusers_version": _dv()}
    for name, comp in components.items():
        if comp is None:
            continue
        comp.save_pretrained(tmp / name)
        index[name] = [type(comp).__module__.split(".")[0], type(comp).__name__]
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    make_readable(tmp)
    out_dir.mkdir(parents=True, exist_ok=True)
    for child in tmp.iterdir():
        dest = out_dir / child.name
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(child, dest)
    shutil.rmtree(tmp, ignore_errors=True)
    files = model_files(out_dir)
    info = {**info, "fingerprint": _fingerprint([files["unet"], files["text_encoder"]])}
    write_json(files["info"], info)
    return info


def _dv() -> str:
    import diffusers

    return diffusers.__version__


def load_t2i(model_dir, device: str | torch.device = "cpu", delta=None) -> T2IBundle:
    """Load a model folder (components by ``from_pretrained``), optionally with
    a delta of replaced tensors (open_clip text names, or ``unet.``/
    ``text_encoder.`` prefixed names)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    model_dir = Path(model_dir)
    files = model_files(model_dir)
    for key in ("unet", "text_encoder"):
        if not files[key].exists():
            raise InputFileError(files[key], f"missing: {model_dir} is not a text-to-image model folder")
    try:
        unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
        scheduler = DDPMScheduler.from_pretrained(model_dir, subfolder="scheduler")
        text_encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder")
        tokenizer = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
        vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae") if (model_dir / "vae").is_dir() else None
    except (OSError, ValueError, RuntimeError) as exc:
        raise InputFileError(model_dir, f"cannot load the text-to-image model ({exc})") from exc
    bundle = T2IBundle(
        unet.eval(), scheduler, text_encoder.eval(), tokenizer, vae.eval() if vae else None, model_dir,
        read_json(files["info"]) if files["info"].exists() else {},
    )
    for p in (*unet.parameters(), *text_encoder.parameters(), *(vae.parameters() if vae else [])):
        p.requires_grad_(False)
    if delta is not None:
        apply_delta(bundle, delta)
    device = torch.device(device)
    for m in (bundle.unet, bundle.text_encoder, bundle.vae):
        if m is not None:
            m.to(device)
    return bundle


def delta_targets(bundle: T2IBundle, tensors: dict[str, torch.Tensor], naming: str) -> dict:
    """Delta tensors -> {(component, parameter name): tensor}."""
    out = {}
    if naming == "open_clip":
        for name, t in open_clip_to_hf(tensors, bundle.text_layers, hf_prefix(bundle.text_encoder)).items():
            out[("text_encoder", name)] = t
        return out
    for name, t in tensors.items():
        comp, _, rest = name.partition(".")
        if comp not in ("unet", "text_encoder"):
            raise UnlearnflowError(f"delta tensor {name!r}: expected a unet. or text_encoder. prefix")
        out[(comp, rest)] = t
    return out


def apply_delta(bundle: T2IBundle, delta) -> list[str]:
    from ..io import load_tensors

    if isinstance(delta, dict):
        tensors, naming = delta, "components"
    else:
        tensors, meta = load_tensors(delta, what="a delta")
        naming = meta.get("naming", "components")
    modules = {"unet": bundle.unet, "text_encoder": bundle.text_encoder}
    params = {c: dict(m.named_parameters()) for c, m in modules.items()}
    changed = []
    for (comp, name), t in delta_targets(bundle, tensors, naming).items():
        if name not in params[comp]:
            raise UnlearnflowError(f"{delta if not isinstance(delta, dict) else 'delta'}: {comp} has no parameter {name!r}")
        p = params[comp][name]
        if p.shape != t.shape:
            raise UnlearnflowError(f"delta {comp}.{name}: shape {tuple(t.shape)} != model's {tuple(p.shape)}")
        with torch.no_grad():
            p.copy_(t.to(p.dtype))
        changed.append(f"{comp}.{name}")
    return changed


# ------------------------------------------------------------ sampling
SAMPLERS = ("ddim", "ddpm")  # the first is the default


def sampling_options(sampling: dict, steps: int | None = None) -> dict:
    """:func:`generate`'s keywords from a ``t2i.sampling`` mapping: the one
    place its keys and defaults are read (``steps`` overrides its steps)."""
    return {
        "steps": int(steps or sampling["steps"]),
        "guidance": float(sampling["guidance"]),
        "batch_size": int(sampling.get("batch_size", 64)),
        "sampler": str(sampling.get("sampler", SAMPLERS[0])),
    }


def seed_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One generator per image, so an image depends on its seed only: its
    start noise, and the ancestral sampler's noise at every step."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def initial_noise(shape: tuple, generators: Sequence[torch.Generator]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


def _sampling_scheduler(config, sampler: str):
    """``ddim``: deterministic DDIM (eta 0), diffusers' pipelines' default;
    ``ddpm``: DDPM's ancestral sampler, fresh noise at every step."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if sampler not in SAMPLERS:
        raise UnlearnflowError(f"t2i.sampling.sampler: {sampler!r} is not one of {list(SAMPLERS)}")
    return (DDIMScheduler if sampler == "ddim" else DDPMScheduler).from_config(config)


@torch.no_grad()
def generate(
    bundle: T2IBundle,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int = 25,
    guidance: float = 3.0,
    negative_prompt: str = "",
    batch_size: int = 64,
    sampler: str = SAMPLERS[0],
) -> torch.Tensor:
    """Classifier-free guided samples as uint8 (N, 3, H, W): the loop of
    diffusers' StableDiffusionPipeline, written out so the same code serves
    the pixel-space default and latent Stable Diffusion. Each image's noise
    (the start, and the ancestral sampler's per step) comes from its seed."""
    if len(prompts) != len(seeds):
        raise UnlearnflowError(f"generate: {len(prompts)} prompts but {len(seeds)} seeds")
    sched = _sampling_scheduler(bundle.scheduler.config, sampler)
    sched.set_timesteps(int(steps))
    dev = bundle.device
    uncond = bundle.encode_prompts([negative_prompt])
    out = []
    for i in range(0, len(prompts), batch_size):
        p = list(prompts[i : i + batch_size])
        cond = bundle.encode_prompts(p)
        ctx = torch.cat([uncond.expand(len(p), -1, -1), cond])
        gens = seed_generators(seeds[i : i + batch_size])
        x = initial_noise(bundle.latent_shape, gens).to(dev) * sched.init_noise_sigma
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([x, x]), t)
            eps_u, eps_c = bundle.unet(inp, t, encoder_hidden_states=ctx).sample.chunk(2)
            # DDPM draws one noise per image from the list; DDIM (eta 0) draws none
            x = sched.step(eps_u + guidance * (eps_c - eps_u), t, x, generator=gens).prev_sample
        if bundle.vae is not None:
            x = bundle.vae.decode(x / bundle.vae.config.scaling_factor).sample
        elif bundle.unshuffle > 1:
            x = F.pixel_shuffle(x, bundle.unshuffle)
        out.append(((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu())
    return torch.cat(out)


# ------------------------------------------------------------ training
def denoising_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet predicts, by the scheduler's ``prediction_type`` (SD 1.x
    predicts epsilon, SD 2.x v, the tiny default x0)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise UnlearnflowError(f"unsupported prediction_type {kind!r}")


def noise_loss(
    bundle: T2IBundle,
    x0: torch.Tensor,
    ctx: torch.Tensor,
    gen: torch.Generator,
    reduction="mean",
    *,
    uncond: torch.Tensor | None = None,
    guidance: float = 1.0,
    snr_gamma: float | None = None,
    t_weights: torch.Tensor | None = None,
):
    """The denoising loss MSE(unet(x_t, t, c), target) at random t.

    ``snr_gamma``: Min-SNR-gamma weighting (Hang et al., ICCV 2023; diffusers'
    ``--snr_gamma``), each sample's loss times min(SNR(t), gamma) / gamma
    over the x0 error (over epsilon's: / SNR; over v's: / (SNR + 1)).

    With ``uncond`` (the empty prompt's embedding) and ``guidance`` w != 1, the
    prediction is the classifier-free-guided ``pred_u + w (pred_c - pred_u)``
    the sampler uses, differentiated through both branches (SalUn's mask)."""
    n = len(x0)
    if t_weights is None:
        t = torch.randint(0, bundle.scheduler.config.num_train_timesteps, (n,), generator=gen).to(x0.device)
    else:  # biased timesteps (diffusers' --timestep_bias_strategy)
        t = torch.multinomial(t_weights, n, replacement=True, generator=gen).to(x0.device)
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    xt = bundle.scheduler.add_noise(x0, noise, t)
    if uncond is None or float(guidance) == 1.0:
        pred = bundle.unet(xt, t, encoder_hidden_states=ctx).sample.float()
    else:
        both = torch.cat([uncond.expand(n, -1, -1), ctx])
        pred_u, pred_c = bundle.unet(torch.cat([xt, xt]), torch.cat([t, t]), encoder_hidden_states=both).sample.float().chunk(2)
        pred = pred_u + float(guidance) * (pred_c - pred_u)
    target = denoising_target(bundle.scheduler, x0, noise, t).float()
    if snr_gamma is None:
        return F.mse_loss(pred, target, reduction=reduction)
    weight = min_snr_weight(bundle.scheduler, t, float(snr_gamma)).view(-1, *[1] * (pred.dim() - 1))
    loss = weight * F.mse_loss(pred, target, reduction="none")
    return {"mean": loss.mean, "sum": loss.sum}.get(reduction, lambda: loss)()


def timestep_weights(num_timesteps: int, strategy: str, multiplier: float, portion: float) -> torch.Tensor:
    """Sampling weights over the training timesteps, as diffusers'
    ``generate_timestep_weights`` (train_text_to_image_sdxl.py): the
    ``portion`` of the latest (``later``: noisiest) or earliest timesteps
    drawn ``multiplier`` times as often as the rest."""
    w = torch.ones(num_timesteps)
    k = int(num_timesteps * float(portion))
    if strategy == "later":
        w[num_timesteps - k :] *= float(multiplier)
    elif strategy == "earlier":
        w[:k] *= float(multiplier)
    else:
        raise UnlearnflowError(f"timestep bias strategy {strategy!r}: expected 'later' or 'earlier'")
    return w / w.sum()


def min_snr_weight(scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample Min-SNR-gamma weight for the scheduler's prediction type,
    normalised so that the x0 error of a low-noise sample weighs 1."""
    ac = scheduler.alphas_cumprod.to(t.device)[t].float()
    snr = ac / (1 - ac)
    w = torch.clamp(snr, max=gamma) / gamma
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return w / snr
    if kind == "v_prediction":
        return w / (snr + 1)
    return w


def to_model_space(bundle: T2IBundle, images_u8: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """uint8 images -> what the UNet denoises ([-1, 1] pixels, or VAE latents),
    resized to ``size`` pixels first (None: the model's)."""
    x = images_u8.float().to(bundle.device) / 127.5 - 1
    size = size or bundle.image_size
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True).clamp(-1, 1)
    if bundle.vae is not None:
        with torch.no_grad():
            x = bundle.vae.encode(x).latent_dist.sample() * bundle.vae.config.scaling_factor
    elif bundle.unshuffle > 1:
        x = F.pixel_unshuffle(x, bundle.unshuffle)
    return x


def oversample_pools(captions: Sequence[str], oversample: dict, concepts: dict, matcher) -> dict:
    """{domain: (share, indices of the pairs whose caption names one of the
    domain's concepts)}; ``matcher(names)`` is a caption -> bool test (the
    stage passes data.select.Matcher over the names, so they match as in the
    forget sets, and only pretrain_t2i's fingerprint follows that module)."""
    pools = {}
    for domain, share in oversample.items():
        names = list(concepts.get(domain) or [])
        if not names:
            raise UnlearnflowError(f"t2i.train.oversample.{domain}: no {domain} concepts to look for in the captions")
        names_it = matcher(names)
        idx = [i for i, c in enumerate(captions) if names_it(c)]
        if not idx:
            raise UnlearnflowError(f"t2i.train.oversample.{domain}: no training caption names any of {names}")
        pools[domain] = (float(share), torch.tensor(idx))
    total = sum(share for share, _ in pools.values())
    if total > 1:
        raise UnlearnflowError(f"t2i.train.oversample: shares sum to {total:g} > 1 ({oversample})")
    return pools


def _lowres_phase(lowres: dict | None, image_size: int) -> dict:
    """``train_tiny_t2i``'s ``lowres`` checked: {"steps", "batch_size", "size"} (absent: no phase)."""
    if not lowres:
        return {"steps": 0}
    unknown = set(lowres) - {"steps", "batch_size", "size"}
    if unknown:
        raise UnlearnflowError(f"lowres: unknown keys {sorted(unknown)}; known: steps, batch_size, size")
    low = {"steps": int(lowres["steps"]), "batch_size": int(lowres["batch_size"]), "size": int(lowres.get("size", image_size // 2))}
    if low["steps"] < 0 or low["batch_size"] < 1 or not 0 < low["size"] < image_size or low["size"] % 8:
        raise UnlearnflowError(f"lowres: {lowres} must have steps >= 0, batch_size >= 1 and size a multiple of 8 below the model's {image_size} px")
    return low


def train_tiny_t2i(
    tars,
    clip_dir,
    out_dir,
    *,
    unet_cfg: dict,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    cond_dropout: float,
    seed: int,
    device: str = "auto",
    threads: int | None = None,
    oversample: dict | None = None,
    concepts: dict | None = None,
    matcher=None,
    snr_gamma: float | None = None,
    lowres: dict | None = None,
    timestep_bias: dict | None = None,
    ema: list[dict] | None = None,
) -> dict:
    """Train the tiny pixel-space UNet on image-caption tars, conditioned on
    the (frozen) tiny CLIP's text tower; AdamW, warm-up then cosine.

    ``oversample`` ({domain: share}, e.g. ``{"styles": 0.35}``): that share of
    every batch is drawn from the pairs whose caption names one of the
    domain's ``concepts``, the rest from all pairs (absent: uniform batches,
    as before the option). ``snr_gamma``: Min-SNR-gamma loss weights (see
    :func:`noise_loss`; absent: the plain MSE, the default).

    ``lowres`` ({"steps": N, "batch_size": B, "size": S}): first N steps on
    the pictures downscaled to S pixels, B a batch (a convolutional UNet
    denoises any size; a picture costs about (S / size)^2 as much, so the
    same seconds show the model several times more pictures), then
    ``steps`` steps at full size; one warm-up and cosine over both phases.
    Not a config option: in the 8-minute bound it did not draw objects'
    shapes better than full-size steps (docs/fidelity.md item 12).

    ``timestep_bias`` ({"strategy": "later" | "earlier", "multiplier", "portion"},
    diffusers' ``--timestep_bias_*``): the training timesteps drawn from
    :func:`timestep_weights` instead of uniformly. ``ema`` (a list of
    diffusers ``EMAModel`` settings, e.g. ``[{"power": 0.75}]``, warm-up
    decay): each exponential moving average of the weights is saved beside
    the model as ``<out_dir>_ema<i>``; the model stays the last weights.
    Neither is a config option: neither drew objects in a style better
    (docs/fidelity.md item 12, eighth pass)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from .clip import load_clip, load_pairs

    if threads:
        torch.set_num_threads(int(threads))
    dev = resolve_device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    clip = load_clip(clip_dir)
    text_encoder, tokenizer = hf_text_encoder_from_open_clip(clip.model, clip.tokenizer)
    unet_cfg = {**unet_cfg, "cross_attention_dim": text_encoder.config.hidden_size}
    unshuffle = int(round(math.sqrt(unet_cfg["in_channels"] / 3)))
    unet = UNet2DConditionModel(**unet_cfg).to(dev)
    scheduler = DDPMScheduler(**TINY_SCHEDULER)
    bundle = T2IBundle(unet, scheduler, text_encoder.to(dev), tokenizer, None, Path(out_dir), {"pixel_unshuffle": unshuffle})
    low = _lowres_phase(lowres, bundle.image_size)  # checked before the pictures load
    images, captions = load_pairs(tars, bundle.image_size)
    with torch.no_grad():  # the text encoder is frozen: encode every caption once
        states = bundle.encode_prompts(captions).cpu()
        empty = bundle.encode_prompts([""]).cpu()
    x_all = images
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    n = len(captions)
    pools = oversample_pools(captions, oversample, concepts or {}, matcher) if oversample else {}
    # pairs per pool in a batch; the uniform rest keeps the default's draws when there is no pool
    counts = [(int(round(batch_size * share)), idx) for share, idx in pools.values()]
    uniform = batch_size - sum(k for k, _ in counts)
    total = steps + low["steps"]

    unet.train()
    bar = LossBar(total, "train tiny text-to-image UNet", every=25)

    def draw(idx: torch.Tensor, size: int | None = None):
        """The batch of pairs ``idx``: mirrored at random, at ``size`` pixels
        (None: the model's), the captions dropped at random."""
        batch = x_all[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5
        batch[flip] = batch[flip].flip(-1)  # mirror pixels, before any space-to-depth
        x0 = to_model_space(bundle, batch, size)
        ctx = states[idx].clone()
        ctx[torch.rand(len(idx), generator=gen) < cond_dropout] = empty  # for classifier-free guidance
        return x0, ctx.to(dev)

    def batches():
        for _ in range(low["steps"]):
            yield draw(torch.randint(0, n, (low["batch_size"],), generator=gen), low["size"])
        for _ in range(steps):
            idx = torch.randint(0, n, (uniform,), generator=gen)
            if counts:
                picks = [pool[torch.randint(0, len(pool), (k,), generator=gen)] for k, pool in counts]
                idx = torch.cat([*picks, idx])
            yield draw(idx)

    tw = timestep_weights(scheduler.config.num_train_timesteps, **timestep_bias) if timestep_bias else None
    averaged = []
    if ema:  # diffusers' EMAModel, its warm-up decay 1 - (1 + step / inv_gamma) ** -power
        from diffusers.training_utils import EMAModel

        averaged = [EMAModel(unet.parameters(), use_ema_warmup=True, **e) for e in ema]
    train_steps(
        opt, batches(), lambda batch: noise_loss(bundle, *batch, gen, snr_gamma=snr_gamma, t_weights=tw), on_step=bar,
        lr=lambda s: lr_at(s, lr=lr, total=total, warmup_steps=warmup_steps, angle_first=True),
        grad_hook=lambda: torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0),
        after_step=(lambda: [a.step(unet.parameters()) for a in averaged]) if averaged else None,
    )  # fmt: skip
    bar.close()
    unet.eval()
    info = {
        "source": "train",
        "arch": "tiny-t2i (pixel space)",
        "pixel_unshuffle": unshuffle,
        "text_encoder_from": str(clip_dir),
        "text_encoder_fingerprint": clip.info.get("fingerprint", ""),
        "parameters": {"unet": sum(p.numel() for p in unet.parameters())},
        "train": {
            "pairs": n,
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "cond_dropout": cond_dropout,
            "seed": seed,
            **({"oversample": {d: {"share": sh, "pairs": len(ix)} for d, (sh, ix) in pools.items()}} if pools else {}),
            **({"snr_gamma": float(snr_gamma)} if snr_gamma is not None else {}),
            **({"timestep_bias": dict(timestep_bias)} if timestep_bias else {}),
            **({"ema": list(ema)} if ema else {}),
            **({"lowres": low} if low["steps"] else {}),
            **bar.summary(dev, last=25),
        },
    }
    comps = {"unet": unet.cpu(), "scheduler": scheduler, "text_encoder": text_encoder.cpu(), "tokenizer": tokenizer}
    for i, a in enumerate(averaged):  # each average beside the model, which stays the last weights
        a.store(unet.parameters())
        a.copy_to(unet.parameters())
        save_t2i(comps, Path(f"{out_dir}_ema{i}"), {**info, "weights": {"ema": ema[i]}})
        a.restore(unet.parameters())
    return save_t2i(comps, out_dir, info)


def export_pretrained(pretrained: str, out_dir, *, cache_dir=None, dtype: str = "fp32", extra: dict | None = None) -> dict:
    """Real path: a diffusers pipeline by model id or local folder (Stable
    Diffusion 1.x / 2.x), its components re-saved in our layout."""
    from diffusers import DiffusionPipeline

    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    try:
        pipe = DiffusionPipeline.from_pretrained(pretrained, dtype=torch_dtype, cache_dir=cache_dir)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise InputFileError(pretrained, f"cannot load a diffusers pipeline ({exc})") from exc
    comps = {name: getattr(pipe, name, None) for name in (*COMPONENTS, "vae")}
    missing = [n for n in COMPONENTS if comps[n] is None]
    if missing:
        raise UnlearnflowError(f"{pretrained}: the pipeline has no {missing} (a text-to-image pipeline is needed)")
    info = {"source": "pretrained", "pretrained": str(pretrained), "pipeline_class": type(pipe).__name__, **(extra or {})}
    return save_t2i(comps, out_dir, info)
