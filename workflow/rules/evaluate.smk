# Evaluation of "a model" (base + optional delta) on the test split.


rule evaluate_clip:
    input:
        unpack(clip_eval_inputs),
        unpack(style_eval_files("test")),
        **model_files(),
        **eval_set_files("test"),
        forget="results/data/{target}/forget.tar",
        heldout="results/data/{target}/heldout.tar",
    output:
        json="results/eval/{model}/{target}/{method}.json",
    log:
        "logs/evaluate_clip/{model}/{target}/{method}.log",
    benchmark:
        "results/benchmarks/evaluate_clip/{model}/{target}/{method}.tsv"
    wildcard_constraints:
        method=RUN_PATTERN,
    conda:
        "../../envs/torch.yaml"
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=gpu_request("evaluate_clip"),
    params:
        code=code_of("evaluate_clip"),
        method=lambda wc: wc.method,  # a run: METHOD or METHOD.sSEED
        seed=lambda wc: (
            None if wc.method == "base" else seed_of(wc.method, UNLEARN_SEEDS)
        ),
        target=lambda wc: P.target_config(wc.target),
        target_id=lambda wc: wc.target,
        mia_seeds=config["evaluation"]["mia_seeds"],
        mia_test_size=config["evaluation"]["mia_test_size"],
        device=device_of("evaluate_clip"),
    script:
        "../scripts/stage.py"
