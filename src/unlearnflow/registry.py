"""What runs where: rule -> stage function, (family, method) -> module.

Plain data and the standard library only, so that the Snakefile can read it
while building the DAG (no torch, no pandas): the code fingerprint of a rule
(:mod:`unlearnflow.provenance`) starts from these names.
"""

from __future__ import annotations

# rule name -> "module:function"; a rule's name leads to its code in one step
STAGES: dict[str, str] = {
    "synthetic_shard": "unlearnflow.data.synthetic:shard_stage",
    "synthetic_eval_set": "unlearnflow.data.synthetic:eval_stage",
    "laion_metadata": "unlearnflow.data.laion:metadata_stage",
    "laion_shard_metadata": "unlearnflow.data.laion:shard_metadata_stage",
    "laion_images": "unlearnflow.data.laion:images_stage",
    "ingest_eval_set": "unlearnflow.data.ingest:eval_stage",
    "select_sets": "unlearnflow.data.select:select_stage",
    "select_retain": "unlearnflow.data.select:retain_stage",
    "pretrain_clip": "unlearnflow.models.clip:pretrain_stage",
    "export_clip": "unlearnflow.models.clip:export_stage",
    "clip_gradients": "unlearnflow.gradients:gradients_stage",
    "layer_analysis": "unlearnflow.layers:analysis_stage",
    "unlearn_clip": "unlearnflow.methods:unlearn_stage",
    "evaluate_clip": "unlearnflow.metrics.clip_eval:evaluate_stage",
    "clip_table": "unlearnflow.tables:clip_table_stage",
    "clip_tradeoff": "unlearnflow.plots:tradeoff_stage",
    "salun_masks": "unlearnflow.masks:masks_stage",
    "slug_search_plot": "unlearnflow.plots:search_trace_stage",
    "costs_table": "unlearnflow.tables:costs_stage",
    "table_html": "unlearnflow.tables:html_stage",
    "provenance_index": "unlearnflow.provenance:index_stage",
    "pretrain_t2i": "unlearnflow.models.diffusion:pretrain_stage",
    "export_t2i": "unlearnflow.models.diffusion:export_stage",
    "t2i_salun_masks": "unlearnflow.methods.t2i_salun:masks_stage",
    "unlearn_t2i": "unlearnflow.methods.t2i:unlearn_t2i_stage",
    "generate_t2i": "unlearnflow.generate:generate_stage",
    "evaluate_t2i": "unlearnflow.metrics.t2i_eval:evaluate_stage",
    "t2i_table": "unlearnflow.tables:t2i_table_stage",
    "train_judge": "unlearnflow.metrics.judge:train_stage",
    "import_judge": "unlearnflow.metrics.judge:import_stage",
    "t2i_compare_grid": "unlearnflow.generate:compare_stage",
    "i2i_images": "unlearnflow.data.objects:images_stage",
    "i2i_sets": "unlearnflow.data.objects:sets_stage",
    "train_i2i": "unlearnflow.models.i2i:train_stage",
    "import_i2i": "unlearnflow.models.i2i:import_stage",
    "unlearn_i2i": "unlearnflow.methods.i2i:unlearn_i2i",
    "evaluate_i2i": "unlearnflow.metrics.i2i_eval:evaluate_stage",
    "i2i_table": "unlearnflow.metrics.i2i_eval:table_stage",
    "i2i_tsne": "unlearnflow.metrics.i2i_eval:tsne_stage",
    "attack_clip": "unlearnflow.attacks.clip:attack_stage",
    "relearn_clip": "unlearnflow.attacks.clip:relearn_stage",
    "attack_t2i": "unlearnflow.attacks.t2i:attack_stage",
    "relearn_t2i": "unlearnflow.attacks.t2i:relearn_stage",
    "robustness_table": "unlearnflow.attacks:table_stage",
}

# model family -> method -> module (one module per method)
METHODS: dict[str, dict[str, str]] = {
    "clip": {
        "slug": "unlearnflow.methods.slug",
        "ft": "unlearnflow.methods.ft",
        "ga": "unlearnflow.methods.ga",
        "ga_ft": "unlearnflow.methods.ga_ft",
        "salun": "unlearnflow.methods.salun",
        "ssd": "unlearnflow.methods.ssd",
    },
    "t2i": {
        "slug": "unlearnflow.methods.t2i_slug",
        "salun": "unlearnflow.methods.t2i_salun",
    },
    "i2i": {  # methods/i2i/: Li et al. (ICLR 2024) and its four baselines
        "li": "unlearnflow.methods.i2i.li",
        "li_proxy": "unlearnflow.methods.i2i.li_proxy",
        "max_loss": "unlearnflow.methods.i2i.max_loss",
        "noisy_label": "unlearnflow.methods.i2i.noisy_label",
        "retain_label": "unlearnflow.methods.i2i.retain_label",
        "random_encoder": "unlearnflow.methods.i2i.random_encoder",
    },
}

# the rules generic over {method}: their stage imports the method's module by
# name at run time, so the method is part of what the job runs
METHOD_RULES: dict[str, str] = {"unlearn_clip": "clip", "unlearn_t2i": "t2i", "unlearn_i2i": "i2i"}
