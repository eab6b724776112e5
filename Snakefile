# unlearnflow: targeted machine unlearning as a DAG of cached stages.
# All logic lives in src/unlearnflow; the rules only wire files together.
import os

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config.yaml")


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"


rule all:
    default_target: True
    input:
        rules.data.input,
