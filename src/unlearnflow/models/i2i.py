"""Image-to-image models with a separable encoder and decoder.

Li et al. (ICLR 2024, arXiv 2402.00351) unlearn an image-to-image model by
fine-tuning only its encoder, so every model here is an :class:`I2IModel`:

- ``encode(images, mask) -> latent``: ``images`` (B, 3, H, W) in [0, 1],
  ``mask`` (B, 1, H, W) with 1 = hidden. The model hides the masked pixels
  itself, so no adapter can peek at what it must fill in. A latent is a
  tensor or a tuple of tensors (a UNet's down-path features);
  :func:`flat_latent` turns either into (B, D).
- ``decode(latent) -> images`` (B, 3, H, W) in [0, 1]; it sees nothing but
  the latent (no skip connection around the encoder).
- every parameter belongs to the encoder, the decoder or neither (frozen:
  e.g. a UNet's timestep embedding, which both halves use):
  :meth:`I2IModel.part_of`.

The masking transform T of a task is :meth:`Task.mask`: an inpainting task
hides a centred square of ``ratio`` x the side; an outpainting task hides
border strips of ``ratio / 2`` x the side on each side (as the reference
code's ``test_single_outpaint``), keeping the centre visible.

Adapters (``ADAPTERS``), each a subclass of :class:`I2IModel`:

- ``timm_mae``: a MAE-style ViT: the encoder is a timm ``VisionTransformer``,
  the decoder MAE's (``decoder_embed``, ``decoder_blocks``, ``decoder_norm``,
  ``decoder_pred``). The embedded default is a tiny one (32 px, patch 4,
  3 blocks of width 96, one decoder block of width 64; 0.4 M parameters)
  trained by the pipeline on the synthetic objects (:func:`train_i2i`); a
  real one is imported from the official MAE checkpoint layout. (A small
  convolutional encoder-decoder with a vector bottleneck was tried first: on
  2 CPU cores it stayed at the per-image mean colour for the first few
  hundred steps, while the ViT learns shapes within 150.)
- ``diffusers_unet``: a diffusers ``UNet2DModel`` used as a one-shot
  inpainting model (fixed timestep; 4 input channels = image + mask, or 3);
  the encoder is ``conv_in`` + the down blocks + the mid block, whose
  features (the mid-block output and every skip tensor) are the latent, as
  the paper defines the encoder of a diffusion model.

A model folder holds ``i2i_config.json`` (adapter name + its config),
``i2i_model.safetensors`` (the state dict) and ``i2i_model.json`` (source,
fingerprint, parameter counts per part). Adding an adapter: subclass
:class:`I2IModel`, set ``adapter``, implement ``build`` (from its config),
``encode``/``decode``/``part_of`` and optionally ``import_checkpoint``, and
add it to ``ADAPTERS`` (and to the schema's ``i2i.adapter`` enum).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import layout
from ..io import InputFileError, UnlearnflowError, atomic_path, load_tensors, read_json, write_json
from ..training import LossBar, lr_at, replace_parameters, train_steps

log = logging.getLogger(__name__)

# a model folder's files (unlearnflow.layout: the rules look for the same names)
CONFIG_NAME, WEIGHTS_NAME, INFO_NAME = layout.I2I_CONFIG, layout.I2I_WEIGHTS, layout.I2I_INFO
PARTS = ("encoder", "decoder", "frozen")


# ------------------------------------------------------------------ tasks
@dataclass(frozen=True)
class Task:
    """One image-to-image task: what the masking transform T hides."""

    name: str
    kind: str  # inpaint | outpaint
    ratio: float

    def __post_init__(self):
        if self.kind not in ("inpaint", "outpaint"):
            raise UnlearnflowError(f"i2i task {self.name!r}: kind {self.kind!r} is not inpaint or outpaint")
        if not 0 < self.ratio < 1:
            raise UnlearnflowError(f"i2i task {self.name!r}: ratio {self.ratio} is not in (0, 1)")

    def mask(self, size: int) -> torch.Tensor:
        """(size, size) bool, True = hidden.

        inpaint: the centred square of side round(ratio * size);
        outpaint: strips of width round(ratio * size / 2) on every border.
        """
        m = torch.zeros(size, size, dtype=torch.bool)
        if self.kind == "inpaint":
            side = int(round(self.ratio * size))
            lo = (size - side) // 2
            m[lo : lo + side, lo : lo + side] = True
        else:
            w = int(round(self.ratio * size / 2))
            m[:w, :] = m[size - w :, :] = True
            m[:, :w] = m[:, size - w :] = True
        if not m.any() or m.all():
            raise UnlearnflowError(f"i2i task {self.name!r}: ratio {self.ratio} hides nothing or everything at {size} px")
        return m


def parse_tasks(specs) -> list[Task]:
    tasks = [t if isinstance(t, Task) else Task(str(t["name"]), str(t["kind"]), float(t["ratio"])) for t in specs]
    if not tasks:
        raise UnlearnflowError("i2i.tasks: no task given")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise UnlearnflowError(f"i2i.tasks: duplicate task names {names}")
    return tasks


def batch_mask(task: Task, batch: int, size: int, device=None) -> torch.Tensor:
    """The task's mask for a batch: (B, 1, S, S) float, 1 = hidden."""
    return task.mask(size).to(device=device, dtype=torch.float32).expand(batch, 1, size, size).contiguous()


def random_masks(tasks: list[Task], batch: int, size: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """One task's mask per sample, drawn uniformly among ``tasks``."""
    stack = torch.stack([t.mask(size) for t in tasks]).float()
    pick = torch.randint(len(tasks), (batch,), generator=generator)
    return stack[pick].unsqueeze(1).to(device)


def hide(images: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """``images`` with the masked pixels replaced by ``fill``."""
    return images * (1 - mask) + fill * mask


def composite(output: torch.Tensor, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The output inside the mask, the input outside (what a user would paste)."""
    return output * mask + images * (1 - mask)


# ------------------------------------------------------------------ latents
def flat_latent(z) -> torch.Tensor:
    """A latent (tensor or tuple of tensors) as one (B, D) tensor."""
    if isinstance(z, torch.Tensor):
        return z.reshape(z.shape[0], -1)
    return torch.cat([t.reshape(t.shape[0], -1) for t in z], dim=1)


def latent_mse(a, b) -> torch.Tensor:
    """Mean squared error over every element of two latents (a batch mean)."""
    return torch.mean((flat_latent(a) - flat_latent(b)) ** 2)


# ------------------------------------------------------------------ models
class I2IModel(nn.Module):
    """An image-to-image model: ``decode(encode(images, mask))``."""

    adapter = "base"
    encoder_prefixes: tuple[str, ...] = ("encoder.",)
    decoder_prefixes: tuple[str, ...] = ("decoder.",)

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        self.image_size = int(config["image_size"])

    @classmethod
    def build(cls, config: dict) -> "I2IModel":
        return cls(config)

    def encode(self, images: torch.Tensor, mask: torch.Tensor):
        raise NotImplementedError

    def decode(self, latent) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images, mask))

    def part_of(self, name: str) -> str:
        """encoder, decoder or frozen (a parameter of neither)."""
        if name.startswith(self.encoder_prefixes):
            return "encoder"
        if name.startswith(self.decoder_prefixes):
            return "decoder"
        return "frozen"

    def named_part(self, part: str) -> dict[str, nn.Parameter]:
        if part not in PARTS:
            raise UnlearnflowError(f"unknown model part {part!r}; known: {PARTS}")
        return {n: p for n, p in self.named_parameters() if self.part_of(n) == part}

    def part_counts(self) -> dict[str, int]:
        return {part: int(sum(p.numel() for p in self.named_part(part).values())) for part in PARTS}

    @classmethod
    def import_checkpoint(cls, path, config: dict) -> "I2IModel":
        raise UnlearnflowError(f"adapter {cls.adapter!r} imports no checkpoint")


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MAEDecoder(nn.Module):
    """MAE's decoder, with MAE's parameter names (so its checkpoints load)."""

    def __init__(self, num_patches: int, embed_dim: int, dim: int, depth: int, heads: int, patch_size: int):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.decoder_embed = nn.Linear(embed_dim, dim)
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        nn.init.trunc_normal_(self.decoder_pos_embed, std=0.02)
        self.decoder_blocks = nn.ModuleList([Block(dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)])
        self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dim, patch_size**2 * 3)

    def forward(self, tokens):
        x = self.decoder_embed(tokens) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # drop the class token


class TimmMAEI2I(I2IModel):
    """A MAE-style ViT: timm VisionTransformer encoder, MAE decoder.

    The masked pixels are set to the normalisation mean (0 after
    normalising) and every token is kept, so encoder and decoder see fixed
    shapes; the decoder predicts every patch's pixels (MAE without
    ``norm_pix_loss``), de-normalised to [0, 1].
    """

    adapter = "timm_mae"
    DEFAULTS = {
        "image_size": 32,
        "patch_size": 4,
        "embed_dim": 96,
        "depth": 3,
        "num_heads": 4,
        "decoder_dim": 64,
        "decoder_depth": 1,
        "decoder_heads": 4,
    }

    def __init__(self, config: dict):
        config = {**self.DEFAULTS, **config}
        super().__init__(config)
        from timm.models.vision_transformer import VisionTransformer

        p = int(config["patch_size"])
        if self.image_size % p:
            raise UnlearnflowError(f"timm_mae: image_size {self.image_size} is not a multiple of patch_size {p}")
        self.patch_size = p
        self.encoder = VisionTransformer(
            img_size=self.image_size,
            patch_size=p,
            embed_dim=int(config["embed_dim"]),
            depth=int(config["depth"]),
            num_heads=int(config["num_heads"]),
            num_classes=0,
            global_pool="",
            class_token=True,
        )
        n = (self.image_size // p) ** 2
        self.decoder = MAEDecoder(
            n, int(config["embed_dim"]), int(config["decoder_dim"]), int(config["decoder_depth"]), int(config["decoder_heads"]), p
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def encode(self, images, mask):
        x = hide((images - self.mean) / self.std, mask)
        return self.encoder.forward_features(x)

    def decode(self, latent):
        patches = self.decoder(latent)  # (B, N, p*p*3)
        b, n, _ = patches.shape
        h = w = int(round(n**0.5))
        p = self.patch_size
        x = patches.reshape(b, h, w, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(b, 3, h * p, w * p)
        return (x * self.std + self.mean).clamp(0, 1)

    @classmethod
    def import_checkpoint(cls, path, config: dict) -> "TimmMAEI2I":
        """An official MAE checkpoint (``model`` dict with ``blocks.*`` and
        ``decoder_*`` keys, .pth or .safetensors) or a state dict of this
        class (``encoder.*``/``decoder.*``)."""
        model = cls(config)
        state = _read_state_dict(path)
        if not any(k.startswith(("encoder.", "decoder.")) for k in state):
            state = {
                (f"decoder.{k}" if k.startswith("decoder_") else f"encoder.{k}"): v
                for k, v in state.items()
                if k != "mask_token"  # every token is kept: MAE's mask token is unused
            }
        _load_strict(model, state, path)
        return model


class DiffusersUNetI2I(I2IModel):
    """A diffusers ``UNet2DModel`` as a one-shot inpainting model.

    Input: the masked image in [-1, 1] (hidden pixels 0), plus the mask as a
    4th channel when the UNet has 4 input channels; output channels 3, read
    as the image in [-1, 1]; the timestep is fixed (``timestep``, default 0).
    The latent is (mid-block output, every down-path skip tensor): the
    decoder (up blocks, output norm and conv) sees nothing else. The
    timestep embedding feeds both halves and is frozen.
    """

    adapter = "diffusers_unet"
    encoder_prefixes = ("unet.conv_in.", "unet.down_blocks.", "unet.mid_block.")
    decoder_prefixes = ("unet.up_blocks.", "unet.conv_norm_out.", "unet.conv_out.")

    def __init__(self, config: dict):
        from diffusers import UNet2DModel

        unet_cfg = dict(config["unet"])
        size = config.get("image_size") or unet_cfg.get("sample_size") or 32
        size = size[0] if isinstance(size, (list, tuple)) else size
        config = {"timestep": 0, **config, "image_size": int(size)}
        super().__init__(config)
        self.unet = UNet2DModel.from_config(unet_cfg)
        c = self.unet.config
        if c.in_channels not in (3, 4) or c.out_channels != 3:
            raise UnlearnflowError(f"diffusers_unet: in_channels {c.in_channels} (3 or 4) / out_channels {c.out_channels} (3) unsupported")
        if c.time_embedding_type != "positional" or self.unet.class_embedding is not None:
            raise UnlearnflowError("diffusers_unet: only positional time embeddings and no class conditioning")
        skips = [type(b).__name__ for b in [*self.unet.down_blocks, *self.unet.up_blocks] if hasattr(b, "skip_conv")]
        if skips:
            raise UnlearnflowError(f"diffusers_unet: skip-sample blocks {skips} bypass the encoder; unsupported")
        self.timestep = int(config["timestep"])

    def _emb(self, batch: int, device):
        t = torch.full((batch,), self.timestep, dtype=torch.long, device=device)
        return self.unet.time_embedding(self.unet.time_proj(t).to(dtype=self.unet.dtype))

    def encode(self, images, mask):
        u = self.unet
        x = hide(images * 2 - 1, mask)
        if u.config.in_channels == 4:
            x = torch.cat([x, mask.to(x.dtype)], dim=1)
        if u.config.center_input_sample:
            x = 2 * x - 1.0
        emb = self._emb(x.shape[0], x.device)
        sample = u.conv_in(x)
        res = (sample,)
        for block in u.down_blocks:
            sample, r = block(hidden_states=sample, temb=emb)
            res += r
        if u.mid_block is not None:
            sample = u.mid_block(sample, emb)
        return (sample, *res)

    def decode(self, latent):
        u = self.unet
        sample, res = latent[0], tuple(latent[1:])
        emb = self._emb(sample.shape[0], sample.device)
        for block in u.up_blocks:
            r, res = res[-len(block.resnets) :], res[: -len(block.resnets)]
            sample = block(sample, r, emb)
        sample = u.conv_out(u.conv_act(u.conv_norm_out(sample)))
        return ((sample + 1) / 2).clamp(0, 1)

    @classmethod
    def import_checkpoint(cls, path, config: dict) -> "DiffusersUNetI2I":
        """A ``UNet2DModel`` folder (``save_pretrained``'s config.json + weights)."""
        from diffusers import UNet2DModel

        try:
            unet = UNet2DModel.from_pretrained(str(path))
        except (OSError, ValueError, EnvironmentError) as exc:
            raise InputFileError(path, f"not a diffusers UNet2DModel folder ({exc})") from exc
        model = cls({**config, "unet": _plain_config(unet.config)})
        _load_strict(model.unet, unet.state_dict(), path)
        return model


ADAPTERS: dict[str, type[I2IModel]] = {
    TimmMAEI2I.adapter: TimmMAEI2I,
    DiffusersUNetI2I.adapter: DiffusersUNetI2I,
}


def adapter_class(name: str) -> type[I2IModel]:
    if name not in ADAPTERS:
        raise UnlearnflowError(f"unknown i2i adapter {name!r}; known adapters: {sorted(ADAPTERS)}")
    return ADAPTERS[name]


def _plain_config(cfg) -> dict:
    """A diffusers FrozenDict as plain JSON values (private keys dropped)."""
    import json

    return json.loads(json.dumps({k: v for k, v in dict(cfg).items() if not k.startswith("_")}, default=list))


def _read_state_dict(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "checkpoint not found")
    if path.suffix == ".safetensors":
        return load_tensors(path, what="a checkpoint")[0]
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (pickle refusals, truncated zips)
        raise InputFileError(path, f"not a readable torch checkpoint ({exc})") from exc
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputFileError(path, "holds no state dict (a dict of tensors, or one under 'model' / 'state_dict')")
    return obj


def _load_strict(module: nn.Module, state: dict, path) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise InputFileError(path, f"does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise InputFileError(path, f"shape mismatch for {bad[:5]}")
    module.load_state_dict(state)


# ------------------------------------------------------------ model folders
def model_files(model_dir) -> dict:
    d = Path(model_dir)
    return {"config": d / CONFIG_NAME, "weights": d / WEIGHTS_NAME, "info": d / INFO_NAME}


def build_model(adapter: str, config: dict) -> I2IModel:
    return adapter_class(adapter).build(config)


def save_i2i(model: I2IModel, out_dir, info: dict) -> dict:
    """Write a model folder atomically, file by file (info last)."""
    from .clip import fingerprint

    files = model_files(out_dir)
    write_json(files["config"], {"adapter": model.adapter, "config": model.config})
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    from safetensors.torch import save_file

    with atomic_path(files["weights"], suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    info = dict(info)
    info.update(
        adapter=model.adapter,
        fingerprint=fingerprint(files["weights"]),
        n_params=model.part_counts(),
        image_size=model.image_size,
    )
    write_json(files["info"], info)
    return info


def load_i2i(model_dir, device: str | torch.device = "cpu", delta=None) -> I2IModel:
    """Load a model folder (and optionally a delta of replaced tensors)."""
    files = model_files(model_dir)
    for key in ("config", "weights"):
        if not files[key].exists():
            raise InputFileError(files[key], f"missing: {Path(model_dir)} is not an i2i model folder")
    cfg = read_json(files["config"])
    if "adapter" not in cfg or "config" not in cfg:
        raise InputFileError(files["config"], "no 'adapter' / 'config' keys")
    model = build_model(cfg["adapter"], cfg["config"])
    state, _ = load_tensors(files["weights"], what="a model weights")
    _load_strict(model, state, files["weights"])
    if delta is not None:
        apply_delta(model, delta)
    model.eval()
    return model.to(device)


def apply_delta(model: I2IModel, delta) -> list[str]:
    """Replace named parameters by the tensors of a delta file (or dict)."""
    if isinstance(delta, dict):
        return replace_parameters(model, delta)
    return replace_parameters(model, load_tensors(delta, "unlearnflow.delta/1", "an unlearnflow delta")[0], delta)


def model_fingerprint(model_dir) -> str:
    info = model_files(model_dir)["info"]
    return read_json(info).get("fingerprint", "") if info.exists() else ""


# ------------------------------------------------------------------ images
def load_images(tar, size: int | None = None) -> tuple[torch.Tensor, list[dict]]:
    """Every image of a tar as uint8 (N, 3, S, S) and the samples' metadata."""
    from PIL import Image

    from ..data.shards import iter_samples

    images, metas = [], []
    for s in iter_samples(tar):
        img = s.image()
        if size and img.size != (size, size):
            img = img.resize((size, size), Image.BICUBIC)
        images.append(np.asarray(img, dtype=np.uint8))
        metas.append(s.meta | {"key": s.key})
    if not images:
        raise InputFileError(tar, "no images")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), metas


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float() / 255.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.detach().clamp(0, 1) * 255).round().to(torch.uint8)


@torch.no_grad()
def run_task(model: I2IModel, images_u8: torch.Tensor, task: Task, batch_size: int = 128, paste: bool = False) -> torch.Tensor:
    """The model's outputs (uint8) for one task on a set of images."""
    dev = next(model.parameters()).device
    outs = []
    for i in range(0, len(images_u8), batch_size):
        x = to_float(images_u8[i : i + batch_size]).to(dev)
        m = batch_mask(task, len(x), model.image_size, dev)
        y = model(x, m)
        if paste:
            y = composite(y, x, m)
        outs.append(to_uint8(y).cpu())
    return torch.cat(outs)


# ------------------------------------------------------------------ training
def train_i2i(
    model: I2IModel,
    images_u8: torch.Tensor,
    tasks: list[Task],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    hole_weight: float = 1.0,
    warmup_steps: int = 20,
    device: str | torch.device = "cpu",
    threads: int | None = None,
) -> dict:
    """Train every parameter on masked reconstruction: each sample gets one
    task's mask (uniformly drawn); the loss is the MSE over the whole image,
    the hidden pixels weighted ``hole_weight`` times more. AdamW, linear
    warm-up, then cosine decay; random horizontal flips."""
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(images_u8)
    steps_per_epoch = max(1, n // batch_size)
    total = epochs * steps_per_epoch
    warm = max(0, min(int(warmup_steps), total - 1))
    size = model.image_size
    bar = LossBar(total, f"train {model.adapter}", every=50)

    def batches():
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            for b in range(steps_per_epoch):
                idx = order[b * batch_size : (b + 1) * batch_size]
                x = to_float(images_u8[idx]).to(device)
                flip = (torch.rand(len(idx), generator=gen) < 0.5).to(x.device)
                x[flip] = x[flip].flip(-1)
                yield x, random_masks(tasks, len(idx), size, gen, device)

    def loss_of(batch) -> torch.Tensor:
        x, m = batch
        y = model(x, m)
        w = 1 + (hole_weight - 1) * m
        return torch.mean(w * (y - x) ** 2) / torch.mean(w)

    # lr x the schedule's factor, as torch's LambdaLR computed it before
    train_steps(opt, batches(), loss_of, on_step=bar,
                lr=lambda s: lr * lr_at(s, lr=1.0, total=total, warmup_steps=warm, angle_first=True))  # fmt: skip
    bar.close()
    model.eval()
    return {
        "images": n,
        "epochs": epochs,
        "steps": total,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "hole_weight": hole_weight,
        "warmup_steps": warm,
        "seed": seed,
        "first_loss": float(np.mean(bar.losses[:10])),
        **bar.summary(device),
    }
