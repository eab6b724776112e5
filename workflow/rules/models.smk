# The CLIP model stage: every model ends up as an open_clip local-dir folder.


wildcard_constraints:
    model=r"[A-Za-z0-9_.-]+",


if config["clip"]["source"] == "train":

    rule pretrain_clip:
        input:
            shards=expand("results/data/laion/{shard}.tar", shard=SHARDS),
        output:
            **model_files("{model}"),
        log:
            "logs/pretrain_clip/{model}.log",
        benchmark:
            "results/benchmarks/pretrain_clip/{model}.tsv"
        wildcard_constraints:
            model=one_of([MODEL]),
        conda:
            "../../envs/torch.yaml"
        threads: THREADS
        resources:
            mem_mb=4000,
            runtime=60,
            gpu=gpu_request("pretrain_clip"),
        params:
            code=code_of("pretrain_clip"),
            model_cfg=config["clip"]["model_cfg"],
            train=config["clip"]["train"],
            seed=config["seeds"]["train"],
            # rows held out as MIA non-members stay unseen
            heldout_fraction=HELDOUT_FRACTION,
            data_seed=config["seeds"]["data"],
            device=device_of("pretrain_clip"),
        script:
            "../scripts/stage.py"

else:

    rule export_clip:
        input:
            # a local checkpoint file (none for an open_clip tag)
            **source_input(config["clip"]["pretrained"]),
        output:
            **model_files("{model}"),
        log:
            "logs/export_clip/{model}.log",
        benchmark:
            "results/benchmarks/export_clip/{model}.tsv"
        wildcard_constraints:
            model=one_of([MODEL]),
        conda:
            "../../envs/torch.yaml"
        threads: THREADS
        resources:
            mem_mb=16000,
            runtime=60,
        params:
            code=code_of("export_clip"),
            arch=config["clip"]["arch"],
            pretrained=config["clip"]["pretrained"],
            source_stamp=source_stamp(config["clip"]["pretrained"]),
            cache_dir=config["clip"]["cache_dir"],
        script:
            "../scripts/stage.py"
