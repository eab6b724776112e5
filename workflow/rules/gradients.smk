# Per-parameter forget and retain gradients, then the layer analysis.

# gradients.keep: candidates stores only the layers the layer analysis could
# choose, by the same filter; the filter is None with keep: all, so that a
# change of the layers config never reruns the gradient passes then.
KEEP_PARAMS = {
    "keep": config["gradients"]["keep"],
    "candidates": (
        {
            k: config["layers"][k]
            for k in ("exclude", "include_layernorm", "matrices_only")
        }
        if config["gradients"]["keep"] != "all"
        else None
    ),
}


rule clip_gradients:
    input:
        **model_files(),
        tar="results/data/{target}/{set}.tar",
    output:
        grads="results/grads/{model}/{target}/{set}.safetensors",
    log:
        "logs/clip_gradients/{model}/{target}/{set}.log",
    benchmark:
        "results/benchmarks/clip_gradients/{model}/{target}/{set}.tsv"
    wildcard_constraints:
        set="forget|retain",
    conda:
        "../../envs/torch.yaml"
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpu_request("clip_gradients"),
    params:
        **KEEP_PARAMS,
        code=code_of("clip_gradients"),
        set=lambda wc: wc.set,
        loss=lambda wc: config["gradients"][f"{wc.set}_loss"],
        batch_size=config["gradients"]["batch_size"],
        amp=config["gradients"]["amp"],
        device=device_of("clip_gradients"),
    script:
        "../scripts/stage.py"


rule layer_analysis:
    input:
        grad_forget="results/grads/{model}/{target}/forget.safetensors",
        grad_retain=lambda wc: retain_grad(wc.target, wc.model),
        weights="results/models/{model}/open_clip_model.safetensors",
    output:
        table="results/layers/{model}/{target}.parquet",
        plot=report(
            "results/layers/{model}/{target}.png",
            caption="../report/pareto.rst",
            category="2. Layer selection (SLUG)",
            subcategory="{model}",
            labels={"target": "{target}", "figure": "Pareto front of layers"},
        ),
    log:
        "logs/layer_analysis/{model}/{target}.log",
    benchmark:
        "results/benchmarks/layer_analysis/{model}/{target}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        **config["layers"],
        code=code_of("layer_analysis"),
        title=lambda wc: f"{wc.model}: {wc.target}",
    script:
        "../scripts/stage.py"


rule salun_masks:
    input:
        grad_forget="results/grads/{model}/{target}/forget.safetensors",
    output:
        **{
            f"salun_{f}": layout.clip_mask("{model}", "{target}", f)
            for f in MASK_FRACTIONS
        },
    log:
        "logs/salun_masks/{model}/{target}.log",
    benchmark:
        "results/benchmarks/salun_masks/{model}/{target}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        code=code_of("salun_masks"),
        fractions=MASK_FRACTIONS,
        exclude=config["masks"]["exclude"],
        rank_among=config["masks"]["rank_among"],
    script:
        "../scripts/stage.py"
