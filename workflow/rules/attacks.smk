# Robustness: attacks on every evaluated model (the base model included),
# each writing its own rows (src/unlearnflow/attacks), and their table.


rule attack_clip:
    input:
        unpack(clip_delta_input),
        unpack(attack_eval_files),
        **model_files(),
        forget="results/data/{target}/forget.tar",
    output:
        attacks="results/attacks/clip/{model}/{target}/{method}.parquet",
    log:
        "logs/attack_clip/{model}/{target}/{method}.log",
    benchmark:
        "results/benchmarks/attack_clip/{model}/{target}/{method}.tsv"
    wildcard_constraints:
        method=one_of(["base"] + METHODS),
    conda:
        "../../envs/torch.yaml"
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=gpu_request("attack_clip"),
    params:
        code=code_of("attack_clip"),
        attacks=P.attack_params("clip"),
        target=lambda wc: P.target_config(wc.target),
        target_id=lambda wc: wc.target,
        method=lambda wc: wc.method,
        seed=config["seeds"]["attack"],
        device=device_of("attack_clip"),
    script:
        "../scripts/stage.py"


rule relearn_clip:
    input:
        unpack(clip_delta_input),
        unpack(style_eval_files("test")),
        **model_files(),
        **eval_set_files("test"),
        forget="results/data/{target}/forget.tar",
    output:
        attacks="results/attacks/clip/{model}/{target}/{method}.relearn.parquet",
    log:
        "logs/relearn_clip/{model}/{target}/{method}.log",
    benchmark:
        "results/benchmarks/relearn_clip/{model}/{target}/{method}.tsv"
    wildcard_constraints:
        method=one_of(["base"] + METHODS),
    conda:
        "../../envs/torch.yaml"
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=gpu_request("relearn_clip"),
    params:
        code=code_of("relearn_clip"),
        relearn=ATTACKS["clip"]["relearn"],
        target=lambda wc: P.target_config(wc.target),
        target_id=lambda wc: wc.target,
        method=lambda wc: wc.method,
        seed=config["seeds"]["attack"],
        device=device_of("relearn_clip"),
    script:
        "../scripts/stage.py"


rule attack_t2i:
    input:
        unpack(t2i_delta_inputs),
        **P.judge_files(),
        **P.judge_checkpoints(),
        model=t2i_model_files()["model"],
        # the base model's pictures: what the prompt search steers towards
        reference="results/generate/{t2i}/{target}/base/prompts.parquet",
        # this model's unattacked pictures and labels (pre-attack successes)
        generated="results/generate/{t2i}/{target}/{method}/prompts.parquet",
        predictions="results/eval_t2i/{t2i}/{target}/{method}.predictions.parquet",
        clip_config=f"results/models/{MODEL}/open_clip_config.json",
        clip_weights=f"results/models/{MODEL}/open_clip_model.safetensors",
    output:
        attacks="results/attacks/t2i/{t2i}/{target}/{method}.parquet",
        prompts="results/attacks/t2i/{t2i}/{target}/{method}.prompts.parquet",
        grid=report(
            "results/attacks/t2i/{t2i}/{target}/{method}.grid.png",
            caption="../report/t2i_attack.rst",
            category="7. Robustness",
            subcategory="{target}",
            labels={"method": "{method}", "figure": "adversarial prompts"},
        ),
    log:
        "logs/attack_t2i/{t2i}/{target}/{method}.log",
    benchmark:
        "results/benchmarks/attack_t2i/{t2i}/{target}/{method}.tsv"
    wildcard_constraints:
        method=one_of(["base"] + T2I_METHODS),
    conda:
        "../../envs/torch.yaml"
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpu_request("attack_t2i"),
    params:
        code=code_of("attack_t2i"),
        attacks=P.attack_params("t2i"),
        target=lambda wc: P.target_config(wc.target),
        concepts=P.t2i_concepts(),
        method=lambda wc: wc.method,
        sampling=config["t2i"]["sampling"],
        seed=config["seeds"]["attack"],
        device=device_of("attack_t2i"),
    script:
        "../scripts/stage.py"


rule relearn_t2i:
    input:
        unpack(t2i_delta_inputs),
        **P.judge_files(),
        **P.judge_checkpoints(),
        model=t2i_model_files()["model"],
        forget="results/data/{target}/forget.tar",
        clip_config=f"results/models/{MODEL}/open_clip_config.json",
        clip_weights=f"results/models/{MODEL}/open_clip_model.safetensors",
    output:
        attacks="results/attacks/t2i/{t2i}/{target}/{method}.relearn.parquet",
    log:
        "logs/relearn_t2i/{t2i}/{target}/{method}.log",
    benchmark:
        "results/benchmarks/relearn_t2i/{t2i}/{target}/{method}.tsv"
    wildcard_constraints:
        method=one_of(["base"] + T2I_METHODS),
    conda:
        "../../envs/torch.yaml"
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpu_request("relearn_t2i"),
    params:
        code=code_of("relearn_t2i"),
        relearn=ATTACKS["t2i"]["relearn"],
        target=lambda wc: P.target_config(wc.target),
        concepts=P.t2i_concepts(),
        method=lambda wc: wc.method,
        sampling=config["t2i"]["sampling"],
        seed=config["seeds"]["attack"],
        device=device_of("relearn_t2i"),
    script:
        "../scripts/stage.py"


rule robustness_table:
    input:
        attacks=P.attack_files(),
    output:
        csv=report(
            "results/tables/robustness.csv",
            caption="../report/robustness.rst",
            category="1. Tables",
            labels={"table": "robustness", "format": "CSV (download)"},
        ),
        md="results/tables/robustness.md",
        tex="results/tables/robustness.tex",
        provenance="results/tables/robustness.provenance.json",
    log:
        "logs/robustness_table/robustness_table.log",
    benchmark:
        "results/benchmarks/robustness_table/robustness_table.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        code=code_of("robustness_table"),
        caption=P.robustness_caption(),
    script:
        "../scripts/stage.py"
