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
        csv="results/tables/clip_unlearning.csv",
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
        png="results/tables/clip_tradeoff.png",
    log:
        "logs/clip_tradeoff/clip_tradeoff.log",
    conda:
        "../../envs/torch.yaml"
    params:
        title="CLIP unlearning: forget accuracy vs object accuracy",
    script:
        "../scripts/stage.py"
