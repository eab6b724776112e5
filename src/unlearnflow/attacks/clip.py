"""Attacks on an unlearned CLIP: can the forgotten concept be asked for again?

All three report FA@1 (%) on the target's test-split images, the metric of
the CLIP table, with the other classes' accuracy under the attack in
``details`` (an attack that labels every image the target is no attack):

- ``paraphrase``: the target's classifier column rebuilt from other ways of
  naming it: the other domains' templates, the name in snake case, the
  surname or first name alone, and the forget set's own (LAION-style)
  captions. Variants that tokenize exactly like the standard prompt (case:
  open_clip's tokenizer lower-cases) are skipped and listed. The row's
  ``after`` is the best variant (the attacker's worst case for the method).
- ``soft_prompt``: concept recovery by a continuous prompt. The target name's
  token embeddings, inside the domain's templates, are optimised (Adam,
  ``steps`` full-batch steps) on the frozen model to classify the
  validation split's labelled images of every class, the target's among
  them (cross-entropy over all class columns, the target's column from the
  soft prompt; ``use_forget_set`` adds the forget set's pictures); scored on
  the test split, which it never saw.
- ``relearn`` (rule ``relearn_clip``, :func:`relearn`): fine-tune the whole model on
  ``pairs`` forget pairs for ``steps`` steps (AdamW, the cosine loss of each
  image to its own caption, ``logit_scale`` frozen) and score FA@1 at
  ``eval_at`` steps: how fast the concept comes back.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..targets import DOMAINS as DOMAIN
from ..metrics.zeroshot import IDENTITY_TEMPLATES, LOGIT_SCALE, SIMPLE_TEMPLATES, STYLE_TEMPLATES, _format_template
from . import TokenInjection, best_variant, eval_marks, find_span, name_aliases, name_token_ids

TEMPLATES = {"identity": IDENTITY_TEMPLATES, "object": SIMPLE_TEMPLATES, "style": STYLE_TEMPLATES}
# other ways to ask for the concept than the evaluation's own templates
PARAPHRASE_TEMPLATES = {
    "identity": ("a photo of {c}.", "a portrait of {c}.", "{c} smiling on the red carpet.", "{c} at the premiere."),
    "object": ("{c}.", "a photo of a {c}.", "a {c} for sale.", "close-up of the {c}."),
    "style": ("a painting in the {c} style.", "{c} painting.", "an image in {c} style.", "{c} illustration."),
}
PARAPHRASE_DEFAULTS = {"captions": 64}
SOFT_PROMPT_DEFAULTS = {"steps": 300, "lr": 0.01, "use_forget_set": False}
RELEARN_DEFAULTS = {"pairs": 8, "steps": 20, "lr": 1e-4, "weight_decay": 0.0, "eval_at": [0, 1, 2, 5, 10, 20]}


def text_embedding(model, tokens: torch.Tensor, injection: TokenInjection | None = None) -> torch.Tensor:
    """The normalised mean of the normalised embeddings of some prompts (one
    classifier column, as open_clip's zero-shot builder makes it)."""
    with injection or contextlib.nullcontext():
        e = F.normalize(model.encode_text(tokens).float(), dim=-1)
    return F.normalize(e.mean(0), dim=0)


def _with_column(classifier: torch.Tensor, index: int, column: torch.Tensor) -> torch.Tensor:
    out = classifier.clone()
    out[:, index] = column.detach().cpu().to(out.dtype)
    return out


class Attacker:
    """What every CLIP attack of one model and target shares: the test
    split's suite, its image features, and the unattacked classifiers."""

    def __init__(self, bundle, suite, device):
        self.bundle, self.suite, self.device = bundle, suite, device
        self.model = bundle.model
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.kind = suite.target_kind
        self.domain = DOMAIN[self.kind]
        self.names = suite.names_of(self.kind)
        from ..metrics.zeroshot import resolve_target

        self.index = resolve_target(self.names, suite.target_name)
        self.name = self.names[self.index]
        self.feats = suite.image_features(self.model, device)
        self.classifiers = suite.classifiers(self.model, bundle.tokenizer, device)
        self.before = suite.score(self.feats, self.classifiers)

    def tokens(self, prompts) -> torch.Tensor:
        return self.bundle.tokenizer(list(prompts)).to(self.device)

    def score_column(self, column: torch.Tensor) -> dict:
        """The record with the target's column replaced by ``column``."""
        cls = dict(self.classifiers)
        cls[self.domain] = _with_column(cls[self.domain], self.index, column)
        return self.suite.score(self.feats, cls)


def utilities(record: dict) -> dict:
    keys = ("identity_acc1", "test_acc1", "style_acc1")
    return {k: round(float(record[k]), 4) for k in keys if k in record}


# ---------------------------------------------------------------- paraphrase
def paraphrase_variants(kind: str, name: str, captions: list[str], n_captions: int) -> dict[str, list[str]]:
    """{variant: prompts} naming the concept in other ways."""
    aliases = name_aliases(kind, name)
    variants = {"templates": [_format_template(t, name) for t in PARAPHRASE_TEMPLATES[kind]]}
    for label, alias in aliases.items():
        variants[label] = [_format_template(t, alias) for t in TEMPLATES[kind]]
    if captions:
        variants["captions"] = list(dict.fromkeys(captions))[:n_captions]
    return variants


@torch.no_grad()
def paraphrase_attack(att: Attacker, captions: list[str], params: dict) -> tuple[dict, list[dict]]:
    """(the attack's row fields, per-variant rows)."""
    standard = att.tokens([_format_template(t, att.name) for t in TEMPLATES[att.kind]])
    per_variant, skipped = [], []
    for variant, prompts in paraphrase_variants(att.kind, att.name, captions, int(params["captions"])).items():
        tokens = att.tokens(prompts)
        if tokens.shape == standard.shape and torch.equal(tokens, standard):
            skipped.append(variant)  # the tokenizer reads it as the standard prompt
            continue
        record = att.score_column(text_embedding(att.model, tokens))
        per_variant.append({"variant": variant, "fa1": record["fa1"], "prompt": prompts[0], **utilities(record)})
    return best_variant(per_variant, skipped, "fa1", f"paraphrase attack on {att.name!r}"), per_variant


# --------------------------------------------------------------- soft prompt
def soft_prompt_attack(att: Attacker, train_feats: torch.Tensor, train_labels: torch.Tensor, params: dict, seed: int) -> dict:
    """Optimise the name's token embeddings inside the domain's templates so
    that ``train_feats`` (normalised image features) get ``train_labels``."""
    from ..training import train_steps

    torch.manual_seed(int(seed))
    model = att.model
    prompts = [_format_template(t, att.name) for t in TEMPLATES[att.kind]]
    tokens = att.tokens(prompts)
    ids = name_token_ids(att.bundle.tokenizer, att.name)
    spans = [(r, find_span(tokens[r], ids, f"soft prompt of {att.name!r}")) for r in range(len(tokens))]
    embedding = model.token_embedding
    soft = torch.nn.Parameter(embedding.weight[ids].detach().clone().float())
    start = soft.detach().clone()
    opt = torch.optim.Adam([soft], lr=float(params["lr"]))
    weights = att.classifiers[att.domain].to(att.device)
    feats, labels = train_feats.to(att.device), train_labels.to(att.device)
    trace, steps = [], int(params["steps"])

    def loss_of(_step) -> torch.Tensor:
        column = text_embedding(model, tokens, TokenInjection(embedding, spans, soft))
        w = torch.cat([weights[:, : att.index], column[:, None], weights[:, att.index + 1 :]], dim=1)
        return F.cross_entropy(LOGIT_SCALE * feats @ w, labels)

    def record(step, loss, _lr, _hooked) -> None:
        if step % 25 == 0 or step == steps - 1:
            trace.append({"step": step, "loss": round(loss.item(), 5)})

    train_steps(opt, range(steps), loss_of, on_step=record)
    with torch.no_grad():
        column = text_embedding(model, tokens, TokenInjection(embedding, spans, soft.detach()))
        # the nearest vocabulary tokens: whether the optimum is a word at all
        nearest = (F.normalize(soft.detach(), dim=-1) @ F.normalize(embedding.weight.float(), dim=-1).t()).argmax(-1)
    record = att.score_column(column)
    return {
        "after": record["fa1"],
        "record": utilities(record),
        "trace": trace,
        # how far the optimum is from the name's own (edited) embeddings; a
        # method may have zeroed them (SSD dampens the name's token rows)
        "moved": round(float((soft.detach() - start).norm()), 4),
        "name_embedding_norm": round(float(start.norm()), 4),
        "nearest_tokens": nearest.tolist(),
        "name_tokens": ids,
        "train_images": int(len(feats)),
    }


def training_images(att: Attacker, val_tar, forget_images_u8: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The soft prompt's training set: the validation split's labelled
    images of the domain (``val_tar``), every class (the target's among them), and with
    ``forget_images_u8`` the forget set's images too, labelled the target
    (``use_forget_set``: web pictures unlike the rendered test images, which
    made the prompt overfit: on the base model, kite FA@1 100 -> 45)."""
    from ..metrics.zeroshot import encode_images, load_labelled
    from ..models.clip import normalise

    val = load_labelled(val_tar, att.bundle.preprocess)
    feats, labels = [encode_images(att.model, val.images, device=att.device)], [val.labels]
    if forget_images_u8 is not None:
        feats.append(encode_images(att.model, normalise(forget_images_u8), device=att.device))
        labels.append(torch.full((len(forget_images_u8),), att.index, dtype=torch.long))
    return torch.cat(feats), torch.cat(labels)


# ------------------------------------------------------------------ relearning
def relearn(bundle, suite, images_u8: torch.Tensor, captions: list[str], params: dict, seed: int, device) -> list[dict]:
    """Fine-tune on the pairs; the record at each ``eval_at`` step."""
    from ..gradients import set_loss
    from ..methods.finetune import FROZEN
    from ..models.clip import normalise
    from ..training import relearn_curve

    model = bundle.model
    torch.manual_seed(int(seed))
    trainable = [p for n, p in model.named_parameters() if n not in FROZEN]
    for n, p in model.named_parameters():
        p.requires_grad_(n not in FROZEN)
    opt = torch.optim.AdamW(trainable, lr=float(params["lr"]), weight_decay=float(params["weight_decay"]))
    x = normalise(images_u8).to(device)
    tokens = bundle.tokenizer(captions).to(device)
    steps = int(params["steps"])
    marks = eval_marks(params["eval_at"], steps)

    def evaluate(step: int) -> dict:
        rec = suite.evaluate(model, bundle.tokenizer, device)
        return {"step": step, "fa1": rec["fa1"], **utilities(rec)}

    return relearn_curve(model, opt, steps, marks, evaluate,
                         lambda: set_loss("cosine", model.encode_image(x), model.encode_text(tokens), model.logit_scale))  # fmt: skip
