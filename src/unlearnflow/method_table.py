"""The method table: every unlearning method, in one place.

For each method: its model family, its module, its params with their
defaults (the only place a default is stated: the schema checks types and
ranges, the modules read :func:`defaults`, the DAG passes the merged params
to the job), the inputs it reads beyond the model and the sets, and the
jobs its cost is summed over. The Snakefile builds the unlearning rules'
inputs, the costs and the table columns from it, so a new method is one
module, one entry here and, if it departs from its defaults, a config entry.

Plain data and the standard library only: the Snakefile imports it while
building the DAG (no torch, no pandas). It is glue for code fingerprints
(:mod:`unlearnflow.provenance`): its values reach every job through the
rule's ``params:``, so a changed default reruns exactly the jobs it changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

FAMILIES = ("clip", "t2i", "i2i")

# What a method may read beyond the base model and the forget/retain sets
# (the family's rule turns each into a file; workflow/rules/common.smk):
#   grad_forget  the target's forget gradient on the CLIP (clip_gradients)
#   layers       the target's layer table on the CLIP (layer_analysis)
#   mask         the family's SalUn saliency mask at the method's mask_fraction
#   judge        the t2i judge (judge.json and weights), read only with criterion judge
NEEDS = ("grad_forget", "layers", "mask", "judge")

# The cost of a method beyond its own unlearning job: the jobs whose
# benchmark adds to it, as "rule" or "rule:set" (clip_gradients runs per set).
SLUG_COST = ("clip_gradients:forget", "clip_gradients:retain", "layer_analysis")


@dataclass(frozen=True)
class Method:
    family: str
    name: str
    module: str
    defaults: Mapping[str, Any]
    summary: str  # one line for the README's method list
    needs: tuple[str, ...] = ()
    cost: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)  # family-specific facts

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"method {self.name}: unknown family {self.family!r}; known: {FAMILIES}")
        bad = [n for n in self.needs if n not in NEEDS]
        if bad:
            raise ValueError(f"method {self.family}/{self.name}: unknown needs {bad}; known: {NEEDS}")
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))


# ---------------------------------------------------------------- defaults
# CLIP fine-tuning baselines (methods/finetune.py): scaled for the tiny
# default CLIP (3.5 M parameters, pretrained at lr 5e-4); the paper's ViT-B-32
# values are finetune.PAPER.
FINETUNE = {
    "epochs": 5,
    "max_steps": None,
    "lr": 5e-5,
    "weight_decay": 0.1,
    "batch_size": 32,
    "optimizer": "adamw",
    "schedule": "cosine",
    "warmup_steps": 0,
    "passes": "alternate",
    "forget_loss": "cosine",
    "retain_loss": "contrastive",
}
UTILITY_BUDGET = {"identity_acc1": 5.0, "test_acc1": 3.0}
# SLUG's search on CLIP; text-to-image SLUG with criterion clip runs the same
# search on the text encoder (its `clip_search` param)
SLUG = {
    "max_layers_per_tower": 3,
    "max_probes": 10,
    "init_fraction": 0.1,
    # auto: the reference's FA@5 rule; where no front layer meets it within
    # the utility budget, the search runs again on FA@1 (docs/fidelity.md item 9)
    "forget_metric": "auto",
    "forget_target": 0.0,
    "utility_budget": UTILITY_BUDGET,
    "bracket_tol": 0.05,
}
# SSD's dampening constants tried on the validation split: linspace(0.1, 5, 10)
SSD_LAMBDAS = [0.1 + i * (5.0 - 0.1) / 9 for i in range(10)]
# Image-to-image methods (methods/i2i/loop.py): the paper's ViT-B settings are
# loop.PAPER; these are for the tiny default model (0.41 M parameters).
I2I_LOOP = {
    "epochs": 6,  # the paper's 6 (on 120 pictures per class, i2i.data.unlearn_per_class)
    "max_steps": None,
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 0.05,
    "betas": [0.9, 0.95],
    "grad_clip": 3.0,
    "warmup_steps": 10,
    "retain_alpha": 1.0,
    "forget_alpha": 0.2,
    "noise": "gaussian",
    "retain_set": "retain",
}


def _i2i(name: str, summary: str, module: str | None = None, **over) -> Method:
    return Method("i2i", name, module or f"unlearnflow.methods.i2i.{name}", {**I2I_LOOP, **over}, summary)


TABLE: tuple[Method, ...] = (
    # ------------------------------------------------------------ CLIP
    Method(
        "clip",
        "slug",
        "unlearnflow.methods.slug",
        SLUG,
        "one gradient step on one layer of the forget/retain Pareto front, the step size searched on the validation split",
        needs=("grad_forget", "layers"),
        cost=SLUG_COST,
    ),
    Method("clip", "ft", "unlearnflow.methods.ft", {**FINETUNE, "forget_weight": 0.0, "retain_weight": 1.0},
           "fine-tune on the retain set (CLIP loss)"),
    Method("clip", "ga", "unlearnflow.methods.ga", {**FINETUNE, "forget_weight": 1.0, "retain_weight": 0.0},
           "gradient ascent on the forget loss"),
    Method("clip", "ga_ft", "unlearnflow.methods.ga_ft", {**FINETUNE, "forget_weight": 1.0, "retain_weight": 1.0},
           "both: each epoch a full ascent pass over the forget set, then a full descent pass over the retain set (the reference; `passes: joint` pairs each forget batch with a retain batch)"),
    Method(
        "clip",
        "salun",
        "unlearnflow.methods.salun",
        # mask_fraction: which mask file the workflow feeds in; recorded and
        # checked against the file's metadata, not used in training
        {**FINETUNE, "forget_weight": 1.0, "retain_weight": 1.0, "mask_fraction": 0.5},
        "GA+FT with the saliency mask: gradients masked after backward, non-salient weights *and their optimizer state* restored after every step, so weight decay cannot move them",
        needs=("mask",),
        cost=("clip_gradients:forget", "salun_masks"),
    ),
    Method(
        "clip",
        "ssd",
        "unlearnflow.methods.ssd",
        {
            "alpha": 10.0,
            "lambdas": SSD_LAMBDAS,
            "batch_size": 32,
            "forget_metric": "fa1",
            "forget_target": 0.0,
            "utility_budget": UTILITY_BUDGET,
            "forget_loss": "cosine",
            "retain_loss": "contrastive",
            "lambda_mode": "cumulative",
        },
        "selective synaptic dampening: squared-gradient importances, theta *= min(lambda I_d / I_f, 1) where I_f > alpha I_d; the lambdas are epochs that dampen in turn, the first epoch that forgets within budget on the validation split is kept (the reference; `lambda_mode: independent` tries each lambda from the original weights)",
    ),
    # ---------------------------------------------------- text-to-image
    Method(
        "t2i",
        "slug",
        "unlearnflow.methods.t2i_slug",
        {
            # the reference judges its probes with UnlearnCanvas' classifier, the
            # network that scores the results: here the pipeline's judge
            # (generate: the CLIP zero-shot, the old criterion; docs/fidelity.md 10)
            "criterion": "judge",
            "max_layers": 1,  # the reference edits one text layer (clip/a6_uncanvas.py)
            "layer_choice": "deepest",  # the reference's: the deepest front layer
            "max_probes": 8,
            "init_fraction": 0.1,
            "bracket_tol": 0.1,
            "ua_target": 75.0,
            # the reference stops at |IRA - the base's| < 10 points
            # (a6_uncanvas.py: np.abs(ira_original - ira_test) < 0.1)
            "ira_budget": 10.0,
            "clip_score_ratio": 0.9,
            "search_seeds": [1000, 1001],
            "max_retain_prompts": 12,
            "search_steps": 15,
            # the probes' sampler: null, the evaluation's (t2i.sampling.sampler),
            # as the reference probes with its evaluation's pipeline; or ddim /
            # ddpm (DDIM probes misread a DDPM-sampled model: docs/fidelity.md 10)
            "search_sampler": None,
            # cheap probes, then the chosen step validated on the whole search set
            "probe_seeds": 2,
            "probe_steps": 8,
            "max_refine": 4,
            # criterion clip: the CLIP search on the validation split (its
            # layers per tower are max_layers)
            "clip_search": {k: v for k, v in SLUG.items() if k != "max_layers_per_tower"},
        },
        "SLUG on the text encoder: the CLIP's layer table and forget gradient, the step size searched by generating and judging",
        needs=("grad_forget", "layers", "judge"),  # the judge only with criterion judge
        cost=SLUG_COST,
        extra={"nested": {"clip_search": ("clip", "slug")}},  # its keys: CLIP SLUG's params
    ),
    Method(
        "t2i",
        "salun",
        "unlearnflow.methods.t2i_salun",
        {
            "mask_fraction": 0.5,
            "steps": 100,
            "batch_size": 16,
            "lr": 1.0e-5,  # Adam, as SalUn on Stable Diffusion
            "alpha": 1.0,
            "pseudo": "next",
            "pseudo_target": "live",
        },
        "SalUn on the UNet: the forget prompts' noise predicted as another concept's (pseudo-labels), plus the retain loss, on the salient weights only",
        needs=("mask",),
        cost=("t2i_salun_masks",),
    ),
    # ---------------------------------------------------- image-to-image
    _i2i("li", "Li et al.: the encoder embeds forget inputs as the original embeds noise images, retain inputs as the original does", train="encoder"),
    _i2i("li_proxy", "Li et al. with the proxy pool as the retain set", retain_set="proxy", train="encoder"),
    _i2i("max_loss", "maximise the reconstruction loss on the forget set (whole model)", train="full"),
    _i2i("noisy_label", "train towards noise images on the forget set (whole model)", train="full"),
    _i2i("retain_label", "train towards the original's retain outputs on the forget set (whole model)", train="full"),
    _i2i("random_encoder", "encoder trained to map forget inputs to random embeddings of matched statistics", train="encoder"),
)

_BY_KEY = {(m.family, m.name): m for m in TABLE}
if len(_BY_KEY) != len(TABLE):
    raise ValueError("method table: a (family, name) pair appears twice")


class MethodError(ValueError):
    """A method name or params the table does not know (a config error)."""


def methods(family: str) -> list[str]:
    """The method names of a family, in table order."""
    if family not in FAMILIES:
        raise MethodError(f"unknown model family {family!r}; known families: {list(FAMILIES)}")
    return [m.name for m in TABLE if m.family == family]


def get(family: str, name: str) -> Method:
    key = (family, name)
    if key not in _BY_KEY:
        raise MethodError(f"unknown {family} method {name!r}; known {family} methods: {methods(family)}")
    return _BY_KEY[key]


def defaults(family: str, name: str) -> dict:
    """A fresh copy of a method's defaults (nested values copied too)."""
    import copy

    return copy.deepcopy(dict(get(family, name).defaults))


def merge_params(family: str, name: str, given: Mapping | None, where: str = "") -> dict:
    """The method's defaults overridden by ``given``; a mapping-valued default
    (``utility_budget``, ``clip_search``) is merged key by key, as Snakemake
    merges config files, so ``utility_budget: {test_acc1: 1}`` keeps the
    other budgets. A key the method does not have is an error naming it, the
    method and ``where`` it was given (a config key), never silently ignored."""
    given = dict(given or {})
    known = defaults(family, name)
    unknown = sorted(set(given) - set(known))
    if unknown:
        at = f"{where}: " if where else ""
        raise MethodError(f"{at}{family} method {name!r} has no params {unknown}; its params: {sorted(known)}")
    merged = {**known, **given}
    for key, value in given.items():
        if isinstance(known[key], Mapping) and isinstance(value, Mapping):
            merged[key] = {**known[key], **value}
    for key, (fam, other) in get(family, name).extra.get("nested", {}).items():
        merge_params(fam, other, merged[key], f"{where or name}.{key}")  # its keys checked too
    return merged


def check_run_methods(family: str, names, where: str) -> list[str]:
    """``names`` (a config list) checked against the table: an unknown name
    is an error listing the known ones."""
    known = methods(family)
    bad = [n for n in names if n not in known]
    if bad:
        raise MethodError(f"config {where}: unknown {family} methods {bad}; known {family} methods: {known}")
    return list(names)


def modules() -> dict[str, dict[str, str]]:
    """family -> method -> module (what :data:`unlearnflow.registry.METHODS` holds)."""
    return {f: {m.name: m.module for m in TABLE if m.family == f} for f in FAMILIES}


def markdown_list() -> str:
    """The README's method list (tests/test_method_table.py keeps it in sync)."""
    rows = ["| family | method | what it does | reads | module |", "| --- | --- | --- | --- | --- |"]
    for m in TABLE:
        reads = ", ".join(m.needs) or "-"
        rows.append(f"| {m.family} | `{m.name}` | {m.summary} | {reads} | `{m.module}` |")
    return "\n".join(rows)


if __name__ == "__main__":  # the README's method list
    print(markdown_list())
