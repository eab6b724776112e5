# unlearnflow: targeted machine unlearning as a DAG of cached stages.
# All logic lives in src/unlearnflow; the rules only wire files together.
import os
import sys

from snakemake.utils import min_version, validate

# the library beside this Snakefile (the DAG reads its registry and code
# fingerprints; the jobs run it through workflow/scripts/stage.py)
sys.path.insert(0, os.path.join(workflow.basedir, "src"))

from unlearnflow.rerun import key_params_trigger

# Snakemake records params as a set of values without names, so a value
# moving between params reruns nothing; keyed, every change reruns.
key_params_trigger()

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config.yaml")


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/gradients.smk"
include: "workflow/rules/unlearn.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/t2i.smk"
include: "workflow/rules/i2i.smk"
include: "workflow/rules/attacks.smk"


# Cheap rules never go to a cluster queue.
localrules:
    all,
    data,
    clip_table,
    clip_tradeoff,
    slug_search_plot,
    costs_table,
    table_html,
    provenance_index,
    t2i_table,
    t2i_compare_grid,
    i2i_table,
    i2i_tsne,
    robustness_table,


rule all:
    default_target: True
    input:
        rules.data.input,
        P.clip_outputs(),
        P.t2i_outputs(),
        P.i2i_outputs(),
        P.robustness_outputs(),
        P.costs_outputs(),
        P.table_views(),
        "results/provenance.json",
