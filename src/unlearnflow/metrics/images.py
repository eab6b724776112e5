"""Scorers for generated images, shared by the text-to-image and the
image-to-image branches: FID and KID (clean-fid), Inception Score, CLIP score
and paired CLIP cosine, plus PNG and grid writers.

Every score goes through a :class:`FeatureNet`, which names the network it
used (tables print that name, since an FID in a tiny CLIP's feature space is
not comparable with an Inception FID):

- ``inception``: clean-fid's Inception-v3 (TorchScript, fetched by clean-fid
  to ``/tmp/inception-2015-12-05.pt``; tests place a stand-in file there),
  2048-d pool features for FID/KID; IS uses its 1008-way softmax without the
  output bias, as in the original implementation.
- ``clip``: the image tower of a local open_clip folder (the tiny CLIP of the
  embedded default, or any exported model), unnormalised image embeddings;
  IS uses its zero-shot softmax over the class names given.
- ``open_clip``: an open_clip architecture + pretrained tag or checkpoint,
  scored like ``clip``.

Preprocessing is clean-fid's ``mode="clean"`` for every network and every
entry point (:meth:`FeatureNet.image_features`, which the pipeline's t2i and
i2i evaluations call on in-memory uint8 images, :meth:`FeatureNet.probs`
for IS, and :meth:`FeatureNet.folder_features`, which goes through clean-fid's
own ``get_folder_features``): each image, as a uint8 HWC array, is resized by
clean-fid's resizer ``make_resizer("PIL", False, "bicubic", (S, S))`` (PIL
bicubic per channel on float32, no quantisation, clipped to [0, 255]),
S = the network's input size (299 for Inception, the tower's ``image_size``
for CLIP), and the float32 (B, 3, S, S) batch in [0, 255] goes to the network
(which applies its own normalisation). An image that is already S x S is
passed on as ``float32`` unchanged: PIL's resize to the same size is a copy,
so clean-fid's output is the same, bit for bit.

So ``feature_net: inception`` computes FID/KID with clean-fid's clean
preprocessing, its Inception-v3 and its formulas (``fid_from_feats``,
``kernel_distance``): numbers comparable with clean-fid's published (clean
mode) conventions, given the same reference set. The embedded default for
t2i and i2i (``feature_net: {kind: clip}``, ``fid_network: features``)
scores in the tiny CLIP's feature space instead (32 x 32 images into a
32-pixel tower, so no resize happens): a pipeline check, not comparable with
published Inception FIDs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..io import InputFileError, UnlearnflowError, atomic_path

INCEPTION_FILE = "inception-2015-12-05.pt"  # clean-fid's name, in /tmp on Linux


def inception_dir() -> Path:
    """Where clean-fid looks for (and downloads) its Inception TorchScript."""
    return Path(os.environ.get("UNLEARNFLOW_INCEPTION_DIR", "/tmp"))


@dataclass
class FeatureNet:
    """A feature network for FID/KID, class probabilities for IS, and
    (for CLIP networks) text embeddings for the CLIP score."""

    name: str
    embed: Callable[[torch.Tensor], torch.Tensor]  # float (B,3,S,S) in [0,255] -> (B,D)
    input_size: int
    classify: Callable[[torch.Tensor, Sequence[str] | None], torch.Tensor] | None = None
    encode_text: Callable[[Sequence[str]], torch.Tensor] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 128

    # clean-fid hands the extractor float32 (B,3,S,S) in [0,255]
    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.embed(batch.to(self.device, torch.float32))

    def _resized(self, images_u8: torch.Tensor) -> torch.Tensor:
        return clean_resize(images_u8, self.input_size)

    @torch.no_grad()
    def image_features(self, images_u8: torch.Tensor) -> np.ndarray:
        """Features (N, D) of uint8 images (N, 3, H, W)."""
        _check_images(images_u8)
        out = [
            self(self._resized(images_u8[i : i + self.batch_size])).float().cpu()
            for i in range(0, len(images_u8), self.batch_size)
        ]
        return torch.cat(out).numpy().astype(np.float64)

    def folder_features(self, folder) -> np.ndarray:
        """Features of every image under a folder, read by clean-fid."""
        from cleanfid import fid as cfid
        from cleanfid.resize import make_resizer

        folder = Path(folder)
        if not folder.is_dir():
            raise InputFileError(folder, "not a folder of images")
        exts = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
        if not any(f.suffix.lower() in exts for f in folder.rglob("*")):
            raise InputFileError(folder, "holds no images")
        resize = None if self.input_size == 299 else make_resizer("PIL", False, "bicubic", (self.input_size,) * 2)
        feats = cfid.get_folder_features(
            str(folder),
            model=self,
            num_workers=0,
            batch_size=self.batch_size,
            device=self.device,
            mode="clean",
            custom_fn_resize=resize,
            verbose=False,
        )
        return feats.astype(np.float64)

    @torch.no_grad()
    def probs(self, images_u8: torch.Tensor, class_names: Sequence[str] | None = None) -> np.ndarray:
        """Softmax class probabilities (N, K) for the Inception Score."""
        _check_images(images_u8)
        if self.classify is None:
            raise UnlearnflowError(f"feature network {self.name!r} has no classifier for IS")
        out = [
            self.classify(self._resized(images_u8[i : i + self.batch_size]).to(self.device), class_names).float().cpu()
            for i in range(0, len(images_u8), self.batch_size)
        ]
        return torch.cat(out).numpy().astype(np.float64)


def _check_images(images_u8: torch.Tensor) -> None:
    if images_u8.ndim != 4 or images_u8.shape[1] != 3 or len(images_u8) == 0:
        raise UnlearnflowError(f"expected a non-empty batch of images (N, 3, H, W), got shape {tuple(images_u8.shape)}")


def clean_resize(images_u8: torch.Tensor, size: int) -> torch.Tensor:
    """clean-fid's ``mode="clean"`` preprocessing of uint8 images (N, 3, H, W):
    float32 (N, 3, size, size) in [0, 255], exactly what clean-fid's
    ``ResizeDataset`` hands the network (its resizer on each uint8 HWC array,
    then ``ToTensor`` of the float32 result, which does not rescale, stacked).
    Images already ``size`` x ``size`` skip the resizer: PIL returns a copy
    for a same-size resize, so the result is the same, bit for bit."""
    from cleanfid.resize import make_resizer

    if tuple(images_u8.shape[-2:]) == (size, size):
        return images_u8.float()
    resize = make_resizer("PIL", False, "bicubic", (size, size))
    hwc = images_u8.cpu().permute(0, 2, 3, 1).numpy()
    return torch.stack([torch.from_numpy(resize(img).transpose(2, 0, 1)) for img in hwc])


# ------------------------------------------------------------ the networks
def feature_net(
    kind: str = "clip",
    *,
    clip_dir=None,
    arch: str | None = None,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
) -> FeatureNet:
    """One place that turns a feature-network name into a :class:`FeatureNet`."""
    device = torch.device(device)
    if kind == "inception":
        return _inception_net(device)
    if kind == "clip":
        if clip_dir is None:
            raise UnlearnflowError("feature network 'clip' needs clip_dir (a local open_clip model folder)")
        from ..models.clip import load_clip

        bundle = load_clip(clip_dir, device=device)
        return clip_feature_net(bundle.model, bundle.tokenizer, f"{Path(clip_dir).name} image tower", device)
    if kind == "open_clip":
        import open_clip

        if not arch:
            raise UnlearnflowError("feature network 'open_clip' needs arch (e.g. ViT-H-14) and pretrained")
        model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=device)
        model.eval()
        return clip_feature_net(model, open_clip.get_tokenizer(arch), f"{arch} {pretrained or ''}".strip(), device)
    raise UnlearnflowError(f"unknown feature network {kind!r}; known: clip, open_clip, inception")


def clip_feature_net(model, tokenizer, name: str, device) -> FeatureNet:
    """A CLIP image tower as a feature network; IS from its zero-shot softmax
    over class names ("a photo of a {c}."), CLIP score from its text tower."""
    from ..models.clip import OPENAI_MEAN, OPENAI_STD

    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", OPENAI_MEAN), device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", OPENAI_STD), device=device).view(1, 3, 1, 1)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    dtype = next(model.parameters()).dtype

    def embed(x):  # [0,255] -> unnormalised image embedding
        return model.encode_image(((x / 255.0 - mean) / std).to(dtype)).float()

    def encode_text(texts):
        with torch.no_grad():
            return model.encode_text(tokenizer(list(texts)).to(device)).float()

    cache: dict[tuple, torch.Tensor] = {}

    def classify(x, class_names):
        if not class_names:
            raise UnlearnflowError(f"IS with {name!r} needs the class names to classify into")
        key = tuple(class_names)
        if key not in cache:
            cache[key] = F.normalize(encode_text([f"a photo of a {c}." for c in class_names]), dim=-1)
        logit_scale = model.logit_scale.exp().float() if hasattr(model, "logit_scale") else 100.0
        img = F.normalize(embed(x), dim=-1)
        return (logit_scale * img @ cache[key].T).softmax(dim=-1)

    return FeatureNet(name=name, embed=embed, input_size=size, classify=classify, encode_text=encode_text, device=device)


def _inception_net(device) -> FeatureNet:
    from cleanfid.inception_torchscript import InceptionV3W

    path = inception_dir()
    if not (path / INCEPTION_FILE).exists() and os.environ.get("UNLEARNFLOW_OFFLINE"):
        raise InputFileError(path / INCEPTION_FILE, "missing, and downloads are off (UNLEARNFLOW_OFFLINE)")
    try:
        net = InceptionV3W(str(path), download=True, resize_inside=False).to(device).eval()
    except RuntimeError as exc:  # e.g. "PytorchStreamReader failed" on a truncated download
        raise InputFileError(path / INCEPTION_FILE, f"cannot load clean-fid's Inception ({exc}); delete it") from exc

    def classify(x, class_names=None):  # the original IS: softmax without the output bias
        return net.base(x, no_output_bias=True).float()

    return FeatureNet(name="inception_v3 (clean-fid)", embed=net, input_size=299, classify=classify, device=device)


# ------------------------------------------------------------------ scores
def _two_sets(a: np.ndarray, b: np.ndarray, what: str, minimum: int = 2) -> None:
    for x in (a, b):
        if x.ndim != 2 or len(x) < minimum:
            raise UnlearnflowError(f"{what} needs at least {minimum} feature rows per set, got shape {x.shape}")
    if a.shape[1] != b.shape[1]:
        raise UnlearnflowError(f"{what}: feature sizes differ ({a.shape[1]} vs {b.shape[1]})")


def fid(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between two feature sets (clean-fid's formula)."""
    from cleanfid.fid import fid_from_feats

    _two_sets(feats_a, feats_b, "FID")
    return float(max(fid_from_feats(np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)), 0.0))


def kid(feats_a: np.ndarray, feats_b: np.ndarray, seed: int = 0) -> float:
    """Kernel Inception Distance (clean-fid's unbiased MMD, cubic kernel);
    clean-fid draws its subsets from numpy's global generator, seeded here."""
    from cleanfid.fid import kernel_distance

    _two_sets(feats_a, feats_b, "KID")
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        m = min(len(feats_a), len(feats_b), 1000)
        return float(kernel_distance(np.asarray(feats_a), np.asarray(feats_b), num_subsets=100, max_subset_size=m))
    finally:
        np.random.set_state(state)


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))), mean and std over ``splits`` parts."""
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or len(probs) == 0:
        raise UnlearnflowError(f"inception_score: expected (N, K) probabilities, got shape {probs.shape}")
    splits = max(1, min(splits, len(probs)))
    scores = []
    for part in np.array_split(probs, splits):
        py = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(py + 1e-12))).sum(axis=1).mean()
        scores.append(math.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def paired_cosine(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Mean cosine between row i of ``a`` and row i of ``b``."""
    if np.shape(feats_a) != np.shape(feats_b) or len(feats_a) == 0:
        raise UnlearnflowError(f"paired_cosine: shapes differ or are empty ({np.shape(feats_a)} vs {np.shape(feats_b)})")
    return float((_unit(feats_a) * _unit(feats_b)).sum(axis=1).mean())


def clip_score(net: FeatureNet, images_u8: torch.Tensor, prompts: Sequence[str]) -> float:
    """CLIP score: mean over images of 100 x max(cos(image, its prompt), 0)."""
    if net.encode_text is None:
        raise UnlearnflowError(f"CLIP score needs a CLIP feature network, not {net.name!r}")
    if len(prompts) != len(images_u8):
        raise UnlearnflowError(f"CLIP score: {len(images_u8)} images but {len(prompts)} prompts")
    img = _unit(net.image_features(images_u8))
    txt = _unit(net.encode_text(list(prompts)).cpu().numpy())
    return float(100.0 * np.maximum((img * txt).sum(axis=1), 0.0).mean())


# ------------------------------------------------- paired pixel metrics
def _paired(out_u8: torch.Tensor, gt_u8: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    _check_images(out_u8)
    if out_u8.shape != gt_u8.shape:
        raise UnlearnflowError(f"{what}: outputs {tuple(out_u8.shape)} and ground truth {tuple(gt_u8.shape)} differ in shape")
    return out_u8.float() / 255.0, gt_u8.float() / 255.0


@torch.no_grad()
def ssim_psnr(out_u8: torch.Tensor, gt_u8: torch.Tensor) -> dict:
    """Mean SSIM and PSNR (dB) of each output against its own ground truth,
    both from torchmetrics on [0, 1] images (data range 1): SSIM with its
    11-pixel Gaussian window, PSNR per image (then averaged, so one perfect
    picture cannot make the mean infinite; an exact copy is capped at 100 dB)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    a, b = _paired(out_u8, gt_u8, "SSIM / PSNR")
    ssim = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    psnr = peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return {"ssim": float(ssim.mean()), "psnr": float(psnr.clamp(max=100.0).mean())}


@dataclass
class LPIPSNet:
    """LPIPS (Zhang et al., 2018) through torchmetrics: its bundled linear
    heads on an ImageNet backbone (alex, the paper's default, or vgg). ``name`` says which
    backbone weights were used (torchvision's, or a local file and its
    sha256), since LPIPS from other weights is another metric."""

    name: str
    net: torch.nn.Module
    device: torch.device
    batch_size: int = 128

    @torch.no_grad()
    def __call__(self, out_u8: torch.Tensor, gt_u8: torch.Tensor) -> float:
        a, b = _paired(out_u8, gt_u8, "LPIPS")
        dists = [
            self.net(a[i : i + self.batch_size].to(self.device), b[i : i + self.batch_size].to(self.device), normalize=True).flatten().cpu()
            for i in range(0, len(a), self.batch_size)
        ]
        return float(torch.cat(dists).mean())


def lpips_net(net: str = "alex", backbone: str | None = None, device="cpu") -> LPIPSNet:
    """The LPIPS network. ``backbone``: a local torchvision state dict of the
    backbone (``torchvision.models.alexnet().state_dict()``, say), or None
    for torchvision's ImageNet weights, downloaded to the torch hub cache on
    first use (as clean-fid fetches its Inception)."""
    from torchmetrics.functional.image.lpips import _LPIPS

    from ..io import sha256_file

    if net not in ("alex", "vgg"):
        raise UnlearnflowError(f"LPIPS net {net!r}: alex or vgg (i2i.eval.lpips.net)")
    device = torch.device(device)
    if backbone is None:
        model, name = _LPIPS(pretrained=True, net=net), f"lpips-{net} (torchvision ImageNet backbone)"
    else:
        path = Path(backbone)
        if not path.is_file():
            raise InputFileError(path, "LPIPS backbone weights: no such file (i2i.eval.lpips.backbone)")
        model = _LPIPS(pretrained=True, net=net, pnet_rand=True)  # the linear heads from torchmetrics, no download
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file
            raise InputFileError(path, f"not a torch state dict ({exc})") from exc
        # torchmetrics splits torchvision's `features` into slices keeping
        # each layer's index: features.{i}.* -> slice{k}.{i}.*
        slice_of = {
            name.split(".")[1]: name.split(".")[0]
            for name, _ in model.net.named_modules()
            if name.startswith("slice") and name.count(".") == 1
        }
        picked = {}
        for key, value in state.items():
            parts = key.split(".", 2)
            if len(parts) == 3 and parts[0] == "features" and parts[1] in slice_of:
                picked[f"{slice_of[parts[1]]}.{parts[1]}.{parts[2]}"] = value
        want = set(model.net.state_dict())
        missing = sorted(want - set(picked))
        if missing:
            raise InputFileError(path, f"not a torchvision {net} state dict: lacks {missing[:4]} (of {len(missing)})")
        try:
            model.net.load_state_dict(picked)
        except RuntimeError as exc:  # shapes of another architecture
            raise InputFileError(path, f"not a torchvision {net} state dict ({exc})") from exc
        name = f"lpips-{net} (backbone {path.name}, sha256 {sha256_file(path)[:12]})"
    return LPIPSNet(name=name, net=model.eval().to(device), device=device)


# ------------------------------------------------------------- image files
def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 (rounding, clamped)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def save_pngs(images_u8: torch.Tensor, folder, names: Sequence[str]) -> list[Path]:
    """One PNG per image, each written atomically."""
    from PIL import Image

    if len(names) != len(images_u8):
        raise UnlearnflowError(f"save_pngs: {len(images_u8)} images but {len(names)} names")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for img, name in zip(images_u8, names):
        path = folder / f"{name}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
        paths.append(path)
    return paths


def load_pngs(folder) -> tuple[torch.Tensor, list[str]]:
    """The PNGs of a folder (sorted by name) as uint8 (N, 3, H, W) and names."""
    from PIL import Image

    files = sorted(Path(folder).glob("*.png"))
    if not files:
        raise InputFileError(folder, "holds no PNG images")
    arrays = []
    for f in files:
        try:
            arrays.append(np.asarray(Image.open(f).convert("RGB")))
        except OSError as exc:
            raise InputFileError(f, f"not a readable image ({exc})") from exc
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), [f.stem for f in files]


def image_grid(images_u8: torch.Tensor, nrow: int, pad: int = 2, upscale: int = 1):
    """A PIL grid of uint8 images, ``nrow`` per row, white padding."""
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(images_u8.float() / 255.0, nrow=max(1, nrow), padding=pad, pad_value=1.0)
    img = Image.fromarray((grid * 255).round().byte().permute(1, 2, 0).numpy())
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    return img
