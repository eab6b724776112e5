# Text-to-image unlearning: the diffusion model, SalUn's UNet masks, the
# methods (generic over {method}), generation, scoring and the table.


wildcard_constraints:
    t2i=one_of([T2I]),
    pset="forget|retain",


if config["t2i"]["source"] == "train":

    rule pretrain_t2i:
        input:
            shards=expand("results/data/laion/{shard}.tar", shard=SHARDS),
            clip_config=f"results/models/{MODEL}/open_clip_config.json",
        output:
            **t2i_model_files(),
        log:
            "logs/pretrain_t2i/{t2i}.log",
        benchmark:
            "results/benchmarks/pretrain_t2i/{t2i}.tsv"
        priority: T2I_PRIORITY
        conda:
            "../../envs/torch.yaml"
        threads: PRETRAIN_T2I_THREADS
        resources:
            mem_mb=6000,
            runtime=60,
            gpu=gpu_request("pretrain_t2i"),
        params:
            code=code_of("pretrain_t2i"),
            unet_cfg=config["t2i"]["unet_cfg"],
            train=config["t2i"]["train"],
            # read only for t2i.train.oversample: absent, a concept list change reruns nothing here
            concepts=(
                P.t2i_concepts() if config["t2i"]["train"].get("oversample") else {}
            ),
            seed=config["seeds"]["train"],
            device=device_of("pretrain_t2i"),
        script:
            "../scripts/stage.py"

else:

    rule export_t2i:
        input:
            # a local pipeline folder's files (none for a hub id)
            **source_input(config["t2i"]["pretrained"]),
        output:
            **t2i_model_files(),
        log:
            "logs/export_t2i/{t2i}.log",
        benchmark:
            "results/benchmarks/export_t2i/{t2i}.tsv"
        conda:
            "../../envs/torch.yaml"
        threads: THREADS
        resources:
            mem_mb=16000,
            runtime=60,
        params:
            code=code_of("export_t2i"),
            pretrained=config["t2i"]["pretrained"],
            source_stamp=source_stamp(config["t2i"]["pretrained"]),
            cache_dir=config["t2i"]["cache_dir"],
            dtype=config["t2i"]["dtype"],
        script:
            "../scripts/stage.py"


if JUDGE["kind"] == "train":

    rule train_judge:
        input:
            # the held-out accuracy is measured on the eval sets' test pictures
            **layout.eval_set_files("test", EVAL_SETS),
        output:
            info=f"{JUDGE_DIR}/{layout.JUDGE_INFO}",
            weights=f"{JUDGE_DIR}/{layout.JUDGE_WEIGHTS}",
        log:
            f"logs/train_judge/{JUDGE['name']}.log",
        benchmark:
            f"results/benchmarks/train_judge/{JUDGE['name']}.tsv"
        priority: T2I_PRIORITY
        conda:
            "../../envs/torch.yaml"
        threads: THREADS
        resources:
            mem_mb=3000,
            runtime=30,
            gpu=gpu_request("train_judge"),
        params:
            code=code_of("train_judge"),
            name=JUDGE["name"],
            synthetic=P.synthetic_concepts(),
            train=JUDGE["train"],
            min_accuracy=JUDGE["min_accuracy"],
            seed=config["seeds"]["train"],
            device=device_of("train_judge"),
        script:
            "../scripts/stage.py"

else:

    rule import_judge:
        input:
            **layout.eval_set_files("test", EVAL_SETS),
            **P.judge_checkpoints(),
            clip_config=f"results/models/{MODEL}/open_clip_config.json",
            clip_weights=f"results/models/{MODEL}/open_clip_model.safetensors",
        output:
            info=f"{JUDGE_DIR}/{layout.JUDGE_INFO}",
        log:
            f"logs/import_judge/{JUDGE['name']}.log",
        benchmark:
            f"results/benchmarks/import_judge/{JUDGE['name']}.tsv"
        conda:
            "../../envs/torch.yaml"
        threads: THREADS
        resources:
            mem_mb=8000,
            runtime=30,
            gpu=gpu_request("import_judge"),
        params:
            code=code_of("import_judge"),
            name=JUDGE["name"],
            kind=JUDGE["kind"],
            heads=JUDGE["heads"],
            source_stamp=[
                source_stamp(h["checkpoint"]) for h in JUDGE["heads"].values()
            ],
            device=device_of("import_judge"),
        script:
            "../scripts/stage.py"


rule t2i_salun_masks:
    input:
        **t2i_model_files(),
        forget="results/data/{target}/forget.tar",
    output:
        **{
            f"mask_{f:g}": layout.t2i_mask("{t2i}", "{target}", f)
            for f in config["t2i"]["masks"]["fractions"]
        },
    log:
        "logs/t2i_salun_masks/{t2i}/{target}.log",
    benchmark:
        "results/benchmarks/t2i_salun_masks/{t2i}/{target}.tsv"
    priority: T2I_PRIORITY
    conda:
        "../../envs/torch.yaml"
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpu_request("t2i_salun_masks"),
    params:
        code=code_of("t2i_salun_masks"),
        fractions=config["t2i"]["masks"]["fractions"],
        batch_size=config["t2i"]["masks"]["batch_size"],
        guidance=(
            config["t2i"]["sampling"]["guidance"]
            if config["t2i"]["masks"]["guidance"] is None
            else config["t2i"]["masks"]["guidance"]
        ),
        clip_norm=config["t2i"]["masks"]["clip_norm"],
        seed=UNLEARN_SEED,
        device=device_of("t2i_salun_masks"),
    script:
        "../scripts/stage.py"


rule unlearn_t2i:
    input:
        unpack(t2i_method_inputs),
        **t2i_model_files(),
        **layout.eval_set_files("val", EVAL_SETS),
        clip_config=f"results/models/{MODEL}/open_clip_config.json",
        forget="results/data/{target}/forget.tar",
        retain=retain_tar,
    output:
        delta="results/unlearn_t2i/{t2i}/{target}/{method}/delta.safetensors",
        trace="results/unlearn_t2i/{t2i}/{target}/{method}/search.parquet",
        info="results/unlearn_t2i/{t2i}/{target}/{method}/info.json",
    log:
        "logs/unlearn_t2i/{t2i}/{target}/{method}.log",
    benchmark:
        "results/benchmarks/unlearn_t2i/{t2i}/{target}/{method}.tsv"
    wildcard_constraints:
        method=one_of(T2I_METHODS),
    priority: T2I_PRIORITY
    conda:
        "../../envs/torch.yaml"
    threads: THREADS
    resources:
        mem_mb=6000,
        runtime=120,
        gpu=gpu_request("unlearn_t2i"),
    params:
        code=code_of("unlearn_t2i"),
        method=lambda wc: wc.method,
        params=lambda wc: P.method_params("t2i", wc.method),
        target=lambda wc: P.target_config(wc.target),
        concepts=P.t2i_concepts(),
        # the search generates with the evaluation's guidance, but its own
        # seeds and steps: evaluation seeds and steps never rerun it
        guidance=config["t2i"]["sampling"]["guidance"],
        seed=UNLEARN_SEED,
        device=device_of("unlearn_t2i"),
    script:
        "../scripts/stage.py"


rule generate_t2i:
    input:
        unpack(t2i_delta_inputs),
        **t2i_model_files(),
    output:
        forget_dir=directory("results/generate/{t2i}/{target}/{method}/forget"),
        retain_dir=directory("results/generate/{t2i}/{target}/{method}/retain"),
        forget_grid=report(
            "results/generate/{t2i}/{target}/{method}/forget_grid.png",
            caption="../report/t2i_grid.rst",
            category="5. Text-to-image",
            subcategory="{target}",
            labels={"method": "{method}", "prompts": "forget"},
        ),
        retain_grid=report(
            "results/generate/{t2i}/{target}/{method}/retain_grid.png",
            caption="../report/t2i_grid.rst",
            category="5. Text-to-image",
            subcategory="{target}",
            labels={"method": "{method}", "prompts": "retain"},
        ),
        prompts="results/generate/{t2i}/{target}/{method}/prompts.parquet",
    log:
        "logs/generate_t2i/{t2i}/{target}/{method}.log",
    benchmark:
        "results/benchmarks/generate_t2i/{t2i}/{target}/{method}.tsv"
    wildcard_constraints:
        method=one_of(["base"] + T2I_METHODS),
    priority: T2I_PRIORITY
    conda:
        "../../envs/torch.yaml"
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpu_request("generate_t2i"),
    params:
        code=code_of("generate_t2i"),
        target=lambda wc: P.target_config(wc.target),
        concepts=P.t2i_concepts(),
        sampling=config["t2i"]["sampling"],
        device=device_of("generate_t2i"),
    script:
        "../scripts/stage.py"


rule evaluate_t2i:
    input:
        unpack(t2i_delta_inputs),
        **layout.eval_set_files("test", EVAL_SETS),
        **feature_net_input(config["t2i"]["feature_net"]),
        **P.judge_files(),
        model=t2i_model_files()["model"],
        prompts="results/generate/{t2i}/{target}/{method}/prompts.parquet",
        clip_config=f"results/models/{MODEL}/open_clip_config.json",
        clip_weights=f"results/models/{MODEL}/open_clip_model.safetensors",
    output:
        metrics="results/eval_t2i/{t2i}/{target}/{method}.json",
        # the judge's label of every picture (the side-by-side grid prints it)
        predictions="results/eval_t2i/{t2i}/{target}/{method}.predictions.parquet",
    log:
        "logs/evaluate_t2i/{t2i}/{target}/{method}.log",
    benchmark:
        "results/benchmarks/evaluate_t2i/{t2i}/{target}/{method}.tsv"
    wildcard_constraints:
        method=one_of(["base"] + T2I_METHODS),
    priority: T2I_PRIORITY
    conda:
        "../../envs/torch.yaml"
    threads: THREADS
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=gpu_request("evaluate_t2i"),
    params:
        code=code_of("evaluate_t2i"),
        target=lambda wc: P.target_config(wc.target),
        method=lambda wc: wc.method,
        feature_net=config["t2i"]["feature_net"],
        device=device_of("evaluate_t2i"),
    script:
        "../scripts/stage.py"


# Base | SLUG | SalUn side by side: the same prompts and seeds in a row,
# the judge's label under each picture.
rule t2i_compare_grid:
    input:
        prompts=expand(
            "results/generate/{{t2i}}/{{target}}/{method}/prompts.parquet",
            method=["base"] + T2I_METHODS,
        ),
        predictions=expand(
            "results/eval_t2i/{{t2i}}/{{target}}/{method}.predictions.parquet",
            method=["base"] + T2I_METHODS,
        ),
    output:
        png=report(
            "results/generate/{t2i}/{target}/compare.png",
            caption="../report/t2i_compare.rst",
            category="5. Text-to-image",
            subcategory="{target}",
            labels={"method": "all, side by side", "prompts": "forget, then retain"},
        ),
    log:
        "logs/t2i_compare_grid/{t2i}/{target}.log",
    conda:
        "../../envs/data.yaml"
    params:
        code=code_of("t2i_compare_grid"),
        methods=["base"] + T2I_METHODS,
    script:
        "../scripts/stage.py"


rule t2i_table:
    input:
        records=expand(
            "results/eval_t2i/{t2i}/{target}/{method}.json",
            t2i=T2I,
            target=T2I_TARGETS,
            method=["base"] + T2I_METHODS,
        ),
        costs=lambda wc: [
            f for t in T2I_TARGETS for m in T2I_METHODS for f in t2i_cost_files(t, m)
        ],
        judge=P.judge_files()["judge"],
    output:
        csv="results/tables/t2i_unlearning.csv",
        md="results/tables/t2i_unlearning.md",
        tex="results/tables/t2i_unlearning.tex",
        provenance="results/tables/t2i_unlearning.provenance.json",
    log:
        "logs/t2i_table/t2i_unlearning.log",
    conda:
        "../../envs/data.yaml"
    params:
        code=code_of("t2i_table"),
        costs={t: {m: t2i_cost_files(t, m) for m in T2I_METHODS} for t in T2I_TARGETS},
    script:
        "../scripts/stage.py"
