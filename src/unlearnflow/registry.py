"""What runs where: rule -> stage function, (family, method) -> module.

Plain data and the standard library only, so that the Snakefile can read it
while building the DAG (no torch, no pandas): the code fingerprint of a rule
(:mod:`unlearnflow.provenance`) starts from these names.
"""

from __future__ import annotations

from .method_table import modules

# rules file (workflow/rules/FILE.smk) -> its rules, each run by the function
# of its name in unlearnflow.stages.FILE (I/O; the algorithms are elsewhere)
RULES: dict[str, tuple[str, ...]] = {
    "data": (
        "synthetic_shard", "laion_metadata", "laion_shard_metadata", "laion_images",
        "synthetic_eval_set", "ingest_eval_set", "select_sets", "select_retain",
    ),
    "models": ("pretrain_clip", "export_clip"),
    "gradients": ("clip_gradients", "layer_analysis", "salun_masks"),
    "unlearn": ("unlearn_clip", "slug_search_plot"),
    "evaluate": ("evaluate_clip",),
    "tables": ("clip_table", "clip_tradeoff", "costs_table", "table_html", "provenance_index"),
    "t2i": (
        "pretrain_t2i", "export_t2i", "train_judge", "import_judge", "t2i_salun_masks",
        "unlearn_t2i", "generate_t2i", "evaluate_t2i", "t2i_compare_grid", "t2i_table",
    ),
    "i2i": ("i2i_images", "i2i_sets", "train_i2i", "import_i2i", "unlearn_i2i", "evaluate_i2i", "i2i_table", "i2i_tsne"),
    "attacks": ("attack_clip", "relearn_clip", "attack_t2i", "relearn_t2i", "robustness_table"),
}  # fmt: skip

# rule name -> "module:function"; a rule's name leads to its code in one step
STAGES: dict[str, str] = {rule: f"unlearnflow.stages.{file}:{rule}" for file, rules in RULES.items() for rule in rules}

# model family -> method -> module (one module per method): from the method
# table, the one place a method is declared
METHODS: dict[str, dict[str, str]] = modules()

# the rules generic over {method}: their stage imports the method's module by
# name at run time, so the method is part of what the job runs
METHOD_RULES: dict[str, str] = {"unlearn_clip": "clip", "unlearn_t2i": "t2i", "unlearn_i2i": "i2i"}
