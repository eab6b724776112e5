"""CLIP evaluation of one model for one target, as SLUG reports it.

- forget accuracy FA@1 / FA@5: zero-shot top-k accuracy on the target's
  images (identity targets: over all identity names, template "{c}.";
  object targets: over all object names, the 7 simple templates);
- identity_acc1/5: mean per-identity accuracy over the *other* identities;
- test_acc1/5: zero-shot object accuracy (ImageNet-like), the target class
  excluded when the target is an object;
- style targets (UnlearnCanvas-like style x object grid): FA@1 / FA@5 over
  all style names (STYLE_TEMPLATES) on the target style's images, and
  style_acc1/5 the accuracy on the other styles' images; identity and
  object accuracy then cover every class;
- MIA (evaluation stage only): forget pairs vs held-out pairs.

The work is split so that a step-size search can reuse what an edit cannot
change: :class:`EvalSuite` holds the images and class names;
:meth:`EvalSuite.score` turns image features and text classifiers into the
record, so callers decide which of the two to recompute.
"""

from __future__ import annotations

from dataclasses import dataclass


from ..io import UnlearnflowError
from .zeroshot import (
    IDENTITY_TEMPLATES,
    SIMPLE_TEMPLATES,
    STYLE_TEMPLATES,
    LabelledImages,
    encode_images,
    identity_scores,
    load_labelled,
    object_scores,
    read_classes,
    resolve_target,
    text_classifier,
)

METRICS = ("fa1", "fa5", "identity_acc1", "identity_acc5", "test_acc1", "test_acc5")
KINDS = ("identity", "object", "style")
# what a search keeps of a probe's record, and the utilities among them
# (style_acc1: style targets only)
UTILITY = ("identity_acc1", "test_acc1", "style_acc1")
SEARCH_METRICS = ("fa1", "fa5", *UTILITY)


def within_budget(base: dict, metrics: dict, budget: dict) -> bool:
    """Every budgeted utility dropped by at most its budget (points); a
    budget on a metric the target does not measure (style_acc1) is moot."""
    return all(base[k] - metrics[k] <= float(v) for k, v in budget.items() if k in base)


@dataclass
class EvalSuite:
    """Labelled images of one split: identities and objects (and styles,
    for a style target)."""

    identities: LabelledImages
    identity_names: list[str]
    objects: LabelledImages
    object_names: list[str]
    target_name: str
    target_kind: str
    styles: LabelledImages | None = None
    style_names: list[str] | None = None

    @classmethod
    def load(cls, sets: dict, target: dict, preprocess, max_per_class=None) -> "EvalSuite":
        """``sets``: {identities: {tar, classes}, objects: {tar, classes}}
        (+ styles: {tar, classes}, read for a style target only)."""
        kind = target.get("kind", "identity")
        if kind not in KINDS:
            raise UnlearnflowError(f"target {target['name']!r}: kind {kind!r}; CLIP evaluation covers {KINDS}")
        styles = None
        if kind == "style":
            if "styles" not in sets:
                raise UnlearnflowError(
                    f"target {target['name']!r} is a style: its evaluation needs the styles set "
                    "(config data.eval.styles)"
                )
            styles = sets["styles"]
        suite = cls(
            identities=load_labelled(sets["identities"]["tar"], preprocess, max_per_class),
            identity_names=read_classes(sets["identities"]["classes"]),
            objects=load_labelled(sets["objects"]["tar"], preprocess, max_per_class),
            object_names=read_classes(sets["objects"]["classes"]),
            target_name=target["name"],
            target_kind=kind,
            styles=None if styles is None else load_labelled(styles["tar"], preprocess, max_per_class),
            style_names=None if styles is None else read_classes(styles["classes"]),
        )
        resolve_target(suite.names_of(kind), target["name"])  # unknown target: an error listing the names
        return suite

    def names_of(self, kind: str) -> list[str]:
        return {"identity": self.identity_names, "object": self.object_names, "style": self.style_names}[kind]

    @property
    def image_sets(self) -> dict:
        """{identities|objects|styles: LabelledImages}: the images a vision edit re-encodes."""
        sets = {"identities": self.identities, "objects": self.objects}
        if self.styles is not None:
            sets["styles"] = self.styles
        return sets

    # -- the two things an edit can change
    def image_features(self, model, device="cpu", encode=None) -> dict:
        encode = encode or (lambda imgs: encode_images(model, imgs, device=device))
        return {k: encode(v.images) for k, v in self.image_sets.items()}

    def classifiers(self, model, tokenizer, device="cpu") -> dict:
        out = {
            "identities": text_classifier(model, tokenizer, self.identity_names, IDENTITY_TEMPLATES, device=device),
            "objects": text_classifier(model, tokenizer, self.object_names, SIMPLE_TEMPLATES, device=device),
        }
        if self.styles is not None:
            out["styles"] = text_classifier(model, tokenizer, self.style_names, STYLE_TEMPLATES, device=device)
        return out

    # -- and the record they give
    def score(self, feats: dict, classifiers: dict) -> dict:
        kind = self.target_kind
        ids = identity_scores(
            feats["identities"],
            self.identities.labels,
            classifiers["identities"],
            self.identity_names,
            self.target_name if kind == "identity" else None,
        )
        exclude = resolve_target(self.object_names, self.target_name) if kind == "object" else None
        objs = object_scores(feats["objects"], self.objects.labels, classifiers["objects"], exclude_label=exclude)
        if kind == "style":
            style = resolve_target(self.style_names, self.target_name)
            src = object_scores(feats["styles"], self.styles.labels, classifiers["styles"], exclude_label=style)
            record = {"style_acc1": src["test_acc1"], "style_acc5": src["test_acc5"]}
        else:
            src, record = (ids if kind == "identity" else objs), {}
        return {
            "fa1": src["fa1"],
            "fa5": src["fa5"],
            "n_forget_images": src["n_forget_images"],
            "identity_acc1": ids["identity_acc1"],
            "identity_acc5": ids["identity_acc5"],
            "test_acc1": objs["test_acc1"],
            "test_acc5": objs["test_acc5"],
            **record,
        }

    def evaluate(self, model, tokenizer, device="cpu") -> dict:
        return self.score(self.image_features(model, device), self.classifiers(model, tokenizer, device))


def eval_sets_from(inp: dict, split: str) -> dict:
    """The {identities, objects[, styles]} -> {tar, classes} dict from rule
    inputs (styles when the rule has them: style targets)."""
    return {
        s: {"tar": inp[f"{s}_{split}"], "classes": inp[f"{s}_classes"]}
        for s in ("identities", "objects", "styles")
        if f"{s}_{split}" in inp
    }


__all__ = ["EvalSuite", "METRICS", "SEARCH_METRICS", "UTILITY", "eval_sets_from", "within_budget"]
