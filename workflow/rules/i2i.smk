# Image-to-image unlearning (Li et al., ICLR 2024): object pictures by class,
# the encoder-decoder model, unlearning generic over {method}, evaluation
# per split (FID / IS / CLIP), tables and the t-SNE plot.


rule i2i_images:
    output:
        train="results/data/i2i/train.tar",
        test="results/data/i2i/test.tar",
        classes="results/data/i2i/classes.json",
    log:
        "logs/i2i_images/i2i_images.log",
    benchmark:
        "results/benchmarks/i2i_images/i2i_images.tsv"
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        code=code_of("i2i_images"),
        synthetic=P.synthetic_concepts(),
        per_class={
            "train": I2I["data"]["train_per_class"],
            "test": I2I["data"]["test_per_class"],
        },
    script:
        "../scripts/stage.py"


rule i2i_sets:
    input:
        train="results/data/i2i/train.tar",
        test="results/data/i2i/test.tar",
        classes="results/data/i2i/classes.json",
    output:
        **{s: f"results/data/i2i/{s}.tar" for s in I2I_SETS},
        summary="results/data/i2i/split.json",
    log:
        "logs/i2i_sets/i2i_sets.log",
    benchmark:
        "results/benchmarks/i2i_sets/i2i_sets.tsv"
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        code=code_of("i2i_sets"),
        synthetic=P.synthetic_concepts(),
        forget_classes=I2I["forget_classes"],
        retain_classes=I2I["retain_classes"],
        proxy={"pool": I2I["data"]["proxy_pool"], "size": I2I["data"]["proxy_size"]},
        per_class=I2I["data"]["unlearn_per_class"],
    script:
        "../scripts/stage.py"


if I2I["source"] == "train":

    rule train_i2i:
        input:
            train="results/data/i2i/train.tar",
        output:
            **i2i_model_files("{model}"),
        log:
            "logs/train_i2i/{model}.log",
        benchmark:
            "results/benchmarks/train_i2i/{model}.tsv"
        conda:
            "../../envs/torch.yaml"
        threads: THREADS
        resources:
            mem_mb=4000,
            runtime=60,
            gpu=gpu_request("train_i2i"),
        params:
            code=code_of("train_i2i"),
            adapter=I2I["adapter"],
            model_cfg=I2I["model_cfg"],
            train=I2I["train"],
            tasks=I2I["tasks"],
            seed=config["seeds"]["train"],
            device=device_of("train_i2i"),
        script:
            "../scripts/stage.py"

else:

    rule import_i2i:
        input:
            **source_input(I2I["checkpoint"]),
        output:
            **i2i_model_files("{model}"),
        log:
            "logs/import_i2i/{model}.log",
        benchmark:
            "results/benchmarks/import_i2i/{model}.tsv"
        conda:
            "../../envs/torch.yaml"
        threads: THREADS
        resources:
            mem_mb=16000,
            runtime=60,
        params:
            code=code_of("import_i2i"),
            adapter=I2I["adapter"],
            model_cfg=I2I["model_cfg"],
            checkpoint=I2I["checkpoint"],
            source_stamp=source_stamp(I2I["checkpoint"]),
        script:
            "../scripts/stage.py"


rule unlearn_i2i:
    input:
        **i2i_model_files(),
        forget="results/data/i2i/forget.tar",
        retain=i2i_retain_input,
    output:
        delta="results/unlearn_i2i/{model}/{method}/delta.safetensors",
        trace="results/unlearn_i2i/{model}/{method}/trace.parquet",
        info="results/unlearn_i2i/{model}/{method}/info.json",
    log:
        "logs/unlearn_i2i/{model}/{method}.log",
    benchmark:
        "results/benchmarks/unlearn_i2i/{model}/{method}.tsv"
    wildcard_constraints:
        method=r"[a-z0-9_]+",
    conda:
        "../../envs/torch.yaml"
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpu_request("unlearn_i2i"),
    params:
        code=code_of("unlearn_i2i"),
        method=lambda wc: wc.method,
        params=lambda wc: P.method_params("i2i", wc.method),
        tasks=I2I["tasks"],
        seed=UNLEARN_SEED,
        device=device_of("unlearn_i2i"),
    script:
        "../scripts/stage.py"


# Evaluation of "a model": the original (method base) or base + a delta.
rule evaluate_i2i:
    input:
        unpack(i2i_delta_input),
        **i2i_model_files(),
        **P.i2i_feature_inputs(),
        **feature_net_input(I2I["eval"]["features"]),
        **P.lpips_input(),
        test_forget="results/data/i2i/test_forget.tar",
        test_retain="results/data/i2i/test_retain.tar",
        classes="results/data/i2i/classes.json",
    output:
        json="results/eval_i2i/{model}/{method}.json",
        embeddings="results/eval_i2i/{model}/{method}_embeddings.safetensors",
        grid=report(
            "results/eval_i2i/{model}/{method}_grid.png",
            caption="../report/i2i_grid.rst",
            category="6. Image-to-image",
            subcategory="{model}",
            labels={"method": "{method}", "figure": "outputs"},
        ),
    log:
        "logs/evaluate_i2i/{model}/{method}.log",
    benchmark:
        "results/benchmarks/evaluate_i2i/{model}/{method}.tsv"
    wildcard_constraints:
        method=r"[a-z0-9_]+",
    conda:
        "../../envs/torch.yaml"
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=gpu_request("evaluate_i2i"),
    params:
        code=code_of("evaluate_i2i"),
        method=lambda wc: wc.method,
        tasks=I2I["tasks"],
        features=I2I["eval"]["features"],
        fid_network=I2I["eval"]["fid_network"],
        composite=I2I["eval"]["composite"],
        lpips=I2I["eval"]["lpips"],
        is_splits=I2I["eval"]["is_splits"],
        batch_size=I2I["eval"]["batch_size"],
        grid=I2I["eval"]["grid"],
        device=device_of("evaluate_i2i"),
    script:
        "../scripts/stage.py"


rule i2i_table:
    input:
        evals=expand(
            "results/eval_i2i/{model}/{method}.json",
            model=I2I_MODEL,
            method=["base"] + I2I_METHODS,
        ),
        benchmarks=expand(
            "results/benchmarks/unlearn_i2i/{model}/{method}.tsv",
            model=I2I_MODEL,
            method=I2I_METHODS,
        ),
    output:
        csv=report(
            "results/tables/i2i_unlearning.csv",
            caption="../report/i2i_table.rst",
            category="1. Tables",
            labels={"table": "i2i_unlearning", "format": "CSV (download)"},
        ),
        md="results/tables/i2i_unlearning.md",
        tex="results/tables/i2i_unlearning.tex",
        provenance="results/tables/i2i_unlearning.provenance.json",
        fid_is="results/tables/i2i_fid_is.csv",
        clip_cosine="results/tables/i2i_clip_cosine.csv",
    log:
        "logs/i2i_table/i2i_table.log",
    benchmark:
        "results/benchmarks/i2i_table/i2i_table.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        code=code_of("i2i_table"),
        tasks=I2I["tasks"],
        model=I2I_MODEL,
        caption=P.i2i_caption(),
    script:
        "../scripts/stage.py"


rule i2i_tsne:
    input:
        original=f"results/eval_i2i/{I2I_MODEL}/base_embeddings.safetensors",
        unlearned=f"results/eval_i2i/{I2I_MODEL}/{P.i2i_tsne_method()}_embeddings.safetensors",
    output:
        png=report(
            "results/tables/i2i_tsne.png",
            caption="../report/i2i_tsne.rst",
            category="6. Image-to-image",
            labels={"figure": "t-SNE of output embeddings"},
        ),
    log:
        "logs/i2i_tsne/i2i_tsne.log",
    conda:
        "../../envs/torch.yaml"
    params:
        code=code_of("i2i_tsne"),
        method=P.i2i_tsne_method(),
        tasks=[t["name"] for t in I2I["tasks"]],
        seed=config["seeds"]["eval"],
        title=f"{I2I_MODEL}: outputs of the original and {P.i2i_tsne_method()}, forget vs retain classes",
    script:
        "../scripts/stage.py"
