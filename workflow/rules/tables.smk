# The papers' tables, from the evaluation records and the benchmark files.


rule clip_table:
    input:
        evals=expand(
            "results/eval/{model}/{target}/{method}.json",
            model=MODEL,
            target=TARGETS,
            method=["base"] + METHODS,
        ),
        benchmarks=[
            f for t in TARGETS for m in METHODS for f in method_cost_files(t, m)
        ],
    output:
        csv=report(
            "results/tables/clip_unlearning.csv",
            caption="../report/clip_table.rst",
            category="1. Tables",
            labels={"table": "CLIP unlearning"},
        ),
        md="results/tables/clip_unlearning.md",
        tex="results/tables/clip_unlearning.tex",
    log:
        "logs/clip_table/clip_table.log",
    benchmark:
        "results/benchmarks/clip_table/clip_table.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        costs=clip_table_costs(),
        caption="Unlearning in CLIP: forget accuracy (FA), accuracy on other identities, object zero-shot accuracy, MIA, cost.",
    script:
        "../scripts/stage.py"


rule clip_tradeoff:
    input:
        table="results/tables/clip_unlearning.csv",
    output:
        png=report(
            "results/tables/clip_tradeoff.png",
            caption="../report/tradeoff.rst",
            category="4. Trade-off",
            labels={"figure": "forget vs object accuracy"},
        ),
    log:
        "logs/clip_tradeoff/clip_tradeoff.log",
    conda:
        "../../envs/torch.yaml"
    params:
        title="CLIP unlearning: forget accuracy vs object accuracy",
    script:
        "../scripts/stage.py"


# Wall time and peak memory of every heavy job (its benchmark: file).
rule costs_table:
    input:
        benchmarks=heavy_benchmarks(),
    output:
        csv=report(
            "results/tables/costs.csv",
            caption="../report/costs.rst",
            category="1. Tables",
            labels={"table": "costs per job"},
        ),
        md="results/tables/costs.md",
    log:
        "logs/costs_table/costs_table.log",
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/stage.py"


# TODO (a later issue adds image generation): the before/after image grids
# go in the report too, in their own category, once they exist.
