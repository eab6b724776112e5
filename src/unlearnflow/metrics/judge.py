"""The judge of generated pictures: one classifier per domain, independent
of the model being unlearned.

UnlearnCanvas scores generations with dedicated classifiers (a ViT-L/16 per
task) rather than with the CLIP whose text tower conditions the generator
and is the layer SLUG edits: a judge that shares the unlearned model's
weights can call a concept forgotten because the edit broke the judge. So
UA / IRA / CRA come from a :class:`Judge`, of one of three kinds:

- ``train`` (the default): a small timm ResNet with one head per domain
  (identity, object, style), trained by rule ``train_judge`` on labelled
  synthetic renders from a random stream that neither the training shards
  nor the evaluation sets use, so no generator saw them;
- ``checkpoint`` (the real path): a timm classifier per domain from a file
  the user supplies, e.g. UnlearnCanvas's style and object classifiers
  (``vit_large_patch16_224``, state under ``model_state_dict``, 224 px,
  normalised with mean = std = 0.5), checked and scored by ``import_judge``;
- ``clip``: zero-shot classification with the local CLIP (the old judge,
  kept for comparison).

Every judge's held-out accuracy on the evaluation sets' test split (real
renders or the user's labelled folders) is in its ``judge.json`` and in the
text-to-image table's caption.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import layout
from ..io import InputFileError, UnlearnflowError, load_tensors, read_json, sha256_file

DOMAINS = ("identity", "object", "style")
EVAL_SET_OF = {"identity": "identities", "object": "objects", "style": "styles"}
KINDS = ("train", "checkpoint", "clip")

# rule train_judge's defaults (the schema states the same); measured on the
# default: identity 100, object 97-99, style 100 % held out in ~40 s CPU
TRAIN_DEFAULTS = {
    "per_class": {"identities": 150, "objects": 150, "styles": 20},
    "width": 32,
    "epochs": 10,
    "batch_size": 128,
    "lr": 2.0e-3,
    "weight_decay": 0.05,
    "max_shift": 2,
}


# ------------------------------------------------------------ the judge
@dataclass
class Judge:
    """``predict(images_u8, domain)`` -> class index per image, into
    ``classes[domain]``."""

    name: str
    kind: str
    classes: dict[str, list[str]]
    predict_fn: Callable[[torch.Tensor, str], torch.Tensor]
    info: dict = field(default_factory=dict)

    def predict(self, images_u8: torch.Tensor, domain: str) -> torch.Tensor:
        if domain not in self.classes:
            raise UnlearnflowError(f"judge {self.name!r} ({self.kind}) has no {domain} head; it judges {sorted(self.classes)}")
        if len(images_u8) == 0:
            return torch.zeros(0, dtype=torch.long)
        return self.predict_fn(images_u8, domain).cpu()

    def index_of(self, domain: str, names: list[str]) -> torch.Tensor:
        """Class indices of concept names (case-insensitive); a name the head
        does not know is an error naming it, never a silent miss."""
        known = {c.lower(): i for i, c in enumerate(self.classes[domain])}
        missing = sorted({n for n in names if n.lower() not in known})
        if missing:
            raise UnlearnflowError(
                f"judge {self.name!r}: its {domain} head does not know {missing} "
                f"(its classes: {self.classes[domain]}); give a judge trained on these concepts"
            )
        return torch.tensor([known[n.lower()] for n in names], dtype=torch.long)

    def describe(self) -> str:
        held = self.info.get("heldout") or {}
        accs = ", ".join(f"{k} {v['accuracy']:.1f}" for k, v in held.items())
        return f"{self.kind} judge {self.name}" + (f" (held-out accuracy %: {accs})" if accs else "")


def correctness(judge: Judge, images_u8: torch.Tensor, labels: list[dict]) -> dict[str, np.ndarray]:
    """{domain: per-image correctness (1.0 / 0.0, NaN where the label does not
    name the domain)} for every domain any label names."""
    out = {}
    for domain in sorted({d for lab in labels for d in lab}):
        rows = [i for i, lab in enumerate(labels) if domain in lab]
        want = judge.index_of(domain, [labels[i][domain] for i in rows])
        pred = judge.predict(images_u8[rows], domain)
        correct = np.full(len(labels), np.nan)
        correct[rows] = (pred == want).numpy().astype(float)
        out[domain] = correct
    return out


def predictions(judge: Judge, images_u8: torch.Tensor, labels: list[dict]) -> list[dict]:
    """Per image, {domain: predicted class name} for the domains its label names."""
    out = [dict() for _ in labels]
    for domain in sorted({d for lab in labels for d in lab}):
        rows = [i for i, lab in enumerate(labels) if domain in lab]
        pred = judge.predict(images_u8[rows], domain)
        for i, k in zip(rows, pred.tolist()):
            out[i][domain] = judge.classes[domain][k]
    return out


# ------------------------------------------------------- kind: train
def tiny_judge_net(num_classes: dict[str, int], width: int):
    """A timm ResNet-10 (one BasicBlock per stage) of base width ``width``,
    one linear head per domain on its pooled features."""
    from timm.models.resnet import BasicBlock, ResNet

    class TinyJudge(torch.nn.Module):
        def __init__(self):
            super().__init__()
            w = int(width)
            self.backbone = ResNet(BasicBlock, (1, 1, 1, 1), num_classes=0, channels=(w, 2 * w, 4 * w, 8 * w), stem_width=w)
            d = self.backbone.num_features
            self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(d, int(n)) for k, n in num_classes.items()})

        def forward(self, images_u8: torch.Tensor) -> dict[str, torch.Tensor]:
            f = self.backbone(images_u8.float() / 127.5 - 1)
            return {k: h(f) for k, h in self.heads.items()}

    return TinyJudge()


def _decode(sample) -> np.ndarray:
    return np.array(sample.image().convert("RGB"))


def render_training_set(synthetic: dict, per_class: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
    """Labelled renders of the ``judge`` stream of the synthetic benchmark:
    images (N, 3, H, W) uint8 and per domain a label tensor (-1: not this
    domain's picture). Object labels cover object photos and styled objects,
    so the object head also reads objects in a style (a style target's CRA)."""
    from ..data.synthetic import SyntheticSpec, eval_samples

    spec = SyntheticSpec.from_params(synthetic)
    classes = {"identity": list(spec.identities), "object": list(spec.objects), "style": list(spec.styles)}
    images, labels = [], {d: [] for d in DOMAINS}
    for evalset in ("identities", "objects", "styles"):
        for s in eval_samples(spec, evalset, "judge", int(per_class[evalset])):
            meta = s.meta
            images.append(_decode(s))
            lab = {"identity": -1, "object": -1, "style": -1}
            if evalset == "identities":
                lab["identity"] = int(meta["label_index"])
            elif evalset == "objects":
                lab["object"] = int(meta["label_index"])
            else:
                lab["style"] = int(meta["label_index"])
                lab["object"] = int(meta["object_index"])
            for d in DOMAINS:
                labels[d].append(lab[d])
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, {d: torch.tensor(v) for d, v in labels.items()}, classes


def train_tiny_judge(x: torch.Tensor, y: dict[str, torch.Tensor], classes: dict, p: dict, seed: int, device="cpu"):
    """AdamW with a one-cycle schedule, random shifts of up to ``max_shift``
    pixels; the loss is the sum of each head's cross-entropy over its own
    domain's pictures."""
    from tqdm import tqdm

    from ..training import train_steps

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = tiny_judge_net({d: len(c) for d, c in classes.items()}, p["width"]).to(device)
    bs = int(p["batch_size"])
    steps = max(1, int(p["epochs"]) * max(1, len(x) // bs))
    opt = torch.optim.AdamW(net.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, float(p["lr"]), total_steps=steps, pct_start=0.1)
    shift = int(p["max_shift"])
    net.train()
    losses = []

    def batches():
        for _ in tqdm(range(steps), desc="train judge", mininterval=5):
            idx = torch.randint(0, len(x), (bs,), generator=gen)
            batch = x[idx]
            if shift:
                dy, dx = torch.randint(-shift, shift + 1, (2,), generator=gen).tolist()
                batch = torch.roll(batch, (dy, dx), (2, 3))
            yield batch, idx

    def loss_of(b) -> torch.Tensor:
        batch, idx = b
        logits = net(batch.to(device))
        return sum(
            F.cross_entropy(logits[d], y[d][idx].to(device), ignore_index=-1) for d in classes if (y[d][idx] >= 0).any()
        )

    # torch's one-cycle schedule steps after each optimizer step
    train_steps(opt, batches(), loss_of, after_step=sched.step, on_step=lambda _s, loss, *_: losses.append(float(loss.detach())))
    net.eval()
    return net, {"steps": steps, "final_loss": float(np.mean(losses[-20:]))}


def _net_predictor(net, batch_size: int = 256):
    @torch.no_grad()
    def predict(images_u8, domain):
        return torch.cat([net(images_u8[i : i + batch_size])[domain].argmax(1) for i in range(0, len(images_u8), batch_size)])

    return predict


# -------------------------------------------------- kind: checkpoint
def load_timm_head(spec: dict, device) -> tuple[torch.nn.Module, Callable]:
    """One user-supplied timm classifier: ``arch`` + ``checkpoint`` (a state
    dict, or a dict holding it under ``state_key``, UnlearnCanvas's
    ``model_state_dict``), its input size and normalisation."""
    import timm

    path = Path(spec["checkpoint"])
    if not path.is_file():
        raise InputFileError(path, "judge checkpoint not found")
    try:
        model = timm.create_model(spec["arch"], pretrained=False, num_classes=len(spec["classes"]), **(spec.get("timm_kwargs") or {}))
    except (RuntimeError, ValueError) as exc:
        raise UnlearnflowError(f"judge head: timm cannot build {spec['arch']!r} ({exc})") from exc
    try:
        if path.suffix == ".safetensors":
            state, _ = load_tensors(path, what="a classifier")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise InputFileError(path, f"not a readable classifier checkpoint ({exc})") from exc
    key = spec.get("state_key")
    if key:
        if not isinstance(state, dict) or key not in state:
            raise InputFileError(path, f"has no {key!r} entry (its keys: {sorted(state)[:8] if isinstance(state, dict) else type(state).__name__})")
        state = state[key]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputFileError(path, f"does not fit timm {spec['arch']!r} with {len(spec['classes'])} classes ({exc})") from exc
    model.eval().to(device)
    size = int(spec.get("image_size", 224))
    mean = torch.tensor(spec.get("mean", [0.5, 0.5, 0.5]), device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.get("std", [0.5, 0.5, 0.5]), device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def logits(images_u8):
        x = images_u8.float().to(device) / 255.0
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return model((x - mean) / std)

    return model, logits


def checkpoint_judge(name: str, heads: dict, device="cpu", info: dict | None = None) -> Judge:
    fns = {d: load_timm_head(spec, device)[1] for d, spec in heads.items()}

    def predict(images_u8, domain, batch_size=64):
        return torch.cat([fns[domain](images_u8[i : i + batch_size]).argmax(1).cpu() for i in range(0, len(images_u8), batch_size)])

    return Judge(name, "checkpoint", {d: list(s["classes"]) for d, s in heads.items()}, predict, info or {})


# ------------------------------------------------------- kind: clip
def clip_judge(clip_bundle, classes: dict[str, list[str]], info: dict | None = None) -> Judge:
    """Zero-shot classification with a CLIP (UnlearnCanvas-free setups, and the
    comparison against the independent judge)."""
    from .t2i_eval import CLASSIFIER_TEMPLATES, zero_shot

    def predict(images_u8, domain):
        return zero_shot(clip_bundle, images_u8, classes[domain], CLASSIFIER_TEMPLATES[domain])

    return Judge(f"zero-shot {clip_bundle.model_dir.name}", "clip", dict(classes), predict, info or {})


# ---------------------------------------------------- held-out scoring
def heldout_images(eval_sets: dict, domain: str) -> tuple[torch.Tensor, list[str]]:
    """The labelled test pictures of a domain: (images, class names). The
    object domain also takes the styled objects (the style set's ``object``)."""
    from ..data.shards import iter_samples

    images, names = [], []
    sets = {"identity": [("identities", "label")], "object": [("objects", "label"), ("styles", "object")], "style": [("styles", "label")]}
    for evalset, key in sets[domain]:
        if evalset not in eval_sets:
            continue
        for s in iter_samples(eval_sets[evalset]["tar"]):
            if s.meta.get(key) is None:
                continue
            images.append(torch.from_numpy(_decode(s)).permute(2, 0, 1))
            names.append(str(s.meta[key]))
    if not images:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8), []
    return torch.stack(_same_size(images)), names


def _same_size(images: list[torch.Tensor]) -> list[torch.Tensor]:
    h = max(i.shape[-1] for i in images)
    return [i if i.shape[-1] == h else F.interpolate(i[None].float(), size=(h, h), mode="bilinear")[0].round().clamp(0, 255).byte() for i in images]


def heldout_accuracy(judge: Judge, eval_sets: dict) -> dict:
    """{domain: {accuracy %, n}} on the evaluation sets' test pictures."""
    out = {}
    for domain in judge.classes:
        images, names = heldout_images(eval_sets, domain)
        if not names:
            continue
        want = judge.index_of(domain, names)
        acc = float((judge.predict(images, domain) == want).float().mean()) * 100.0
        out[domain] = {"accuracy": round(acc, 2), "n": len(names)}
    return out


# ----------------------------------------------------------- files
def judge_files(folder) -> dict:
    folder = Path(folder)
    return {"info": folder / layout.JUDGE_INFO, "weights": folder / layout.JUDGE_WEIGHTS}


def load_judge(info_path, *, device="cpu", clip_bundle=None) -> Judge:
    """The judge a ``judge.json`` describes (written by ``train_judge`` or
    ``import_judge``)."""
    info_path = Path(info_path)
    info = read_json(info_path)
    kind = info.get("kind")
    if kind == "train":
        weights = judge_files(info_path.parent)["weights"]
        tensors, _ = load_tensors(weights, fmt="judge", what="a judge")
        net = tiny_judge_net({d: len(c) for d, c in info["classes"].items()}, info["train"]["width"])
        net.load_state_dict(tensors)
        net.eval().to(device)
        fn = _net_predictor(net)
        return Judge(info["name"], kind, info["classes"], lambda x, d: fn(x.to(device), d), info)
    if kind == "checkpoint":
        for d, spec in info["heads"].items():  # the file must still be the one import_judge scored
            if sha256_file(spec["checkpoint"]) != spec["sha256"]:
                raise InputFileError(spec["checkpoint"], f"changed since import_judge scored it for the {d} head; rerun import_judge")
        return checkpoint_judge(info["name"], info["heads"], device, info)
    if kind == "clip":
        if clip_bundle is None:
            raise UnlearnflowError(f"{info_path}: a clip judge needs the CLIP loaded (clip_bundle)")
        return clip_judge(clip_bundle, info["classes"], info)
    raise InputFileError(info_path, f"judge kind {kind!r} unknown; known: {KINDS}")


def _check_classes(classes: dict, eval_sets: dict) -> None:
    """The judge must name the evaluation sets' classes, in any order."""
    for domain, evalset in EVAL_SET_OF.items():
        if evalset in eval_sets and domain in classes:
            want = read_json(eval_sets[evalset]["classes"])["classes"]
            missing = sorted({c.lower() for c in want} - {c.lower() for c in classes[domain]})
            if missing:
                raise UnlearnflowError(
                    f"judge {domain} classes {classes[domain]} miss {missing} of {eval_sets[evalset]['classes']}"
                )


__all__ = ["Judge", "load_judge", "correctness", "predictions", "heldout_accuracy", "clip_judge", "checkpoint_judge"]
