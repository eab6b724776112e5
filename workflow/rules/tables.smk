# The papers' tables, from the evaluation records and the benchmark files.


rule clip_table:
    input:
        evals=expand(
            "results/eval/{model}/{target}/{method}.json",
            model=MODEL,
            target=CLIP_TARGETS,
            method=["base"] + CLIP_RUNS,
        ),
        benchmarks=clip_table_benchmarks,
    output:
        csv=report(
            "results/tables/clip_unlearning.csv",
            caption="../report/clip_table.rst",
            category="1. Tables",
            labels={"table": "clip_unlearning", "format": "CSV (download)"},
        ),
        md="results/tables/clip_unlearning.md",
        tex="results/tables/clip_unlearning.tex",
        provenance="results/tables/clip_unlearning.provenance.json",
    log:
        "logs/clip_table/clip_table.log",
    benchmark:
        "results/benchmarks/clip_table/clip_table.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        code=code_of("clip_table"),
        costs=clip_table_costs(),
        caption="Unlearning in CLIP: forget accuracy (FA), accuracy on other identities, object zero-shot accuracy, MIA, cost. "
        + P.slug_stop_rule(),
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
        code=code_of("clip_tradeoff"),
        title="CLIP unlearning: forget accuracy vs object accuracy",
    script:
        "../scripts/stage.py"


# Wall time and peak memory of every heavy job (its benchmark: file).
rule costs_table:
    input:
        benchmarks=heavy_benchmarks,
    output:
        csv=report(
            "results/tables/costs.csv",
            caption="../report/costs.rst",
            category="1. Tables",
            labels={"table": "costs", "format": "CSV (download)"},
        ),
        md="results/tables/costs.md",
    log:
        "logs/costs_table/costs_table.log",
    conda:
        "../../envs/torch.yaml"
    params:
        code=code_of("costs_table"),
    script:
        "../scripts/stage.py"


# The report offers a CSV only as a download: each table also as an HTML page
# that the report shows inline.
rule table_html:
    input:
        csv="results/tables/{table}.csv",
    output:
        html=report(
            "results/tables/{table}.html",
            caption="../report/table_html.rst",
            category="1. Tables",
            labels={"table": "{table}", "format": "HTML (view)"},
        ),
    log:
        "logs/table_html/{table}.log",
    wildcard_constraints:
        table=one_of(REPORT_TABLES),
    conda:
        "../../envs/data.yaml"
    params:
        code=code_of("table_html"),
        title=lambda wc: REPORT_TABLES[wc.table],
    script:
        "../scripts/stage.py"


# Every table row's provenance id -> its record (code, params, model, seeds).
rule provenance_index:
    input:
        tables=P.provenance_tables(),
    output:
        json="results/provenance.json",
    log:
        "logs/provenance_index/provenance_index.log",
    conda:
        "../../envs/data.yaml"
    params:
        code=code_of("provenance_index"),
    script:
        "../scripts/stage.py"


# The before/after image grids are report items of generate_t2i (t2i.smk)
# and of the image-to-image rules (i2i.smk).
