# Unlearning: one rule, generic over {method} (methods/ holds one module each).


rule unlearn_clip:
    input:
        unpack(method_inputs),
        unpack(style_eval_files("val")),
        **model_files(),
        **eval_set_files("val"),
        forget="results/data/{target}/forget.tar",
        retain=retain_tar,
    output:
        delta="results/unlearn/{model}/{target}/{method}/delta.safetensors",
        trace="results/unlearn/{model}/{target}/{method}/search.parquet",
        info="results/unlearn/{model}/{target}/{method}/info.json",
    log:
        "logs/unlearn_clip/{model}/{target}/{method}.log",
    benchmark:
        "results/benchmarks/unlearn_clip/{model}/{target}/{method}.tsv"
    wildcard_constraints:
        method=RUN_PATTERN,
    conda:
        "../../envs/torch.yaml"
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=gpu_request("unlearn_clip"),
    params:
        code=code_of("unlearn_clip"),
        method=lambda wc: method_of(wc.method),
        params=lambda wc: P.method_params("clip", method_of(wc.method)),
        target=lambda wc: P.target_config(wc.target),
        seed=lambda wc: seed_of(wc.method, UNLEARN_SEEDS),
        device=device_of("unlearn_clip"),
    script:
        "../scripts/stage.py"


# SLUG's step-size search, one panel per searched layer (cheap: a local rule).
rule slug_search_plot:
    input:
        trace="results/unlearn/{model}/{target}/slug/search.parquet",
        info="results/unlearn/{model}/{target}/slug/info.json",
    output:
        png=report(
            "results/unlearn/{model}/{target}/slug/search.png",
            caption="../report/search_trace.rst",
            category="3. Step-size search (SLUG)",
            subcategory="{model}",
            labels={"target": "{target}", "figure": "search trace"},
        ),
    log:
        "logs/slug_search_plot/{model}/{target}.log",
    conda:
        "../../envs/torch.yaml"
    params:
        code=code_of("slug_search_plot"),
        title=None,  # None: the plot says method, target, probes, the chosen layer
    script:
        "../scripts/stage.py"
