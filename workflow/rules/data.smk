# Data stages: image-text shards (synthetic or LAION), labelled evaluation
# sets (synthetic or ingested folders), forget/retain sets per target.
LAION = config["data"]["laion"]


wildcard_constraints:
    shard=r"\d{5}",
    target=r"[a-z0-9_]+",
    evalset=one_of(EVAL_SETS),


if config["data"]["source"] == "synthetic":

    rule synthetic_shard:
        output:
            parquet="results/data/laion/{shard}.parquet",
            tar="results/data/laion/{shard}.tar",
            stats="results/data/laion/{shard}_stats.json",
        log:
            "logs/synthetic_shard/{shard}.log",
        benchmark:
            "results/benchmarks/synthetic_shard/{shard}.tsv"
        conda:
            "../../envs/data.yaml"
        resources:
            mem_mb=1000,
            runtime=30,
        params:
            code=code_of("synthetic_shard"),
            synthetic=P.synthetic_shard_spec(),
            shard=lambda wc: wc.shard,
        script:
            "../scripts/stage.py"

else:

    rule laion_metadata:
        output:
            parquet="results/data/laion/metadata.parquet",
        log:
            "logs/laion_metadata/metadata.log",
        benchmark:
            "results/benchmarks/laion_metadata/metadata.tsv"
        conda:
            "../../envs/data.yaml"
        resources:
            mem_mb=2000,
            runtime=120,
        params:
            code=code_of("laion_metadata"),
            url=LAION["metadata_url"],
            sha256=LAION["metadata_sha256"],
            size=LAION["metadata_size"],
            retries=LAION["download_retries"],
            timeout=LAION["download_timeout"],
            backoff=LAION["download_backoff"],
        script:
            "../scripts/stage.py"

    # a checkpoint: once the shards' rows exist, the targets' captions are
    # checked in them before any image is downloaded (checked_shard_metadata)
    checkpoint laion_shard_metadata:
        input:
            metadata="results/data/laion/metadata.parquet",
        output:
            parquet="results/data/laion/{shard}.parquet",
        log:
            "logs/laion_shard_metadata/{shard}.log",
        benchmark:
            "results/benchmarks/laion_shard_metadata/{shard}.tsv"
        conda:
            "../../envs/data.yaml"
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            code=code_of("laion_shard_metadata"),
            shard=lambda wc: wc.shard,
            samples_per_shard=LAION["samples_per_shard"],
            url_col=LAION["url_col"],
            caption_col=LAION["caption_col"],
        script:
            "../scripts/stage.py"

    rule laion_images:
        input:
            # checked first: every target is named in the shards' captions
            parquet=checked_shard_metadata,
        output:
            tar="results/data/laion/{shard}.tar",
            stats="results/data/laion/{shard}_stats.json",
        log:
            "logs/laion_images/{shard}.log",
        benchmark:
            "results/benchmarks/laion_images/{shard}.tsv"
        conda:
            "../../envs/data.yaml"
        threads: LAION["processes"]
        resources:
            mem_mb=4000,
            runtime=240,
        params:
            code=code_of("laion_images"),
            shard=lambda wc: wc.shard,
            samples_per_shard=LAION["samples_per_shard"],
            image_size=LAION["image_size"],
            resize_mode=LAION["resize_mode"],
            encode_quality=LAION["encode_quality"],
            url_col=LAION["url_col"],
            caption_col=LAION["caption_col"],
            additional_columns=LAION["additional_columns"],
            processes=LAION["processes"],
            threads=LAION["threads"],
            timeout=LAION["timeout"],
            retries=LAION["retries"],
        script:
            "../scripts/stage.py"


rule synthetic_eval_set:
    output:
        val="results/data/eval/{evalset}/val.tar",
        test="results/data/eval/{evalset}/test.tar",
        classes="results/data/eval/{evalset}/classes.json",
    log:
        "logs/synthetic_eval_set/{evalset}.log",
    benchmark:
        "results/benchmarks/synthetic_eval_set/{evalset}.tsv"
    wildcard_constraints:
        evalset=one_of(P.eval_sets_from("synthetic")),
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        code=code_of("synthetic_eval_set"),
        synthetic=P.synthetic_concepts(),
        evalset=lambda wc: wc.evalset,
        per_class=lambda wc: config["data"]["eval"][wc.evalset]["per_class"],
    script:
        "../scripts/stage.py"


rule ingest_eval_set:
    output:
        val="results/data/eval/{evalset}/val.tar",
        test="results/data/eval/{evalset}/test.tar",
        classes="results/data/eval/{evalset}/classes.json",
    log:
        "logs/ingest_eval_set/{evalset}.log",
    benchmark:
        "results/benchmarks/ingest_eval_set/{evalset}.tsv"
    wildcard_constraints:
        evalset=one_of(P.eval_sets_from("folders")),
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        code=code_of("ingest_eval_set"),
        evalset=lambda wc: wc.evalset,
        folders=lambda wc: config["data"]["eval"][wc.evalset],
        # the tree's file list (names, sizes, mtimes) and the names file:
        # an image added, removed or replaced reruns the ingestion
        listing=lambda wc: source_stamp(config["data"]["eval"][wc.evalset]["root"]),
        names_stamp=lambda wc: source_stamp(
            config["data"]["eval"][wc.evalset].get("names_file")
        ),
        seed=config["seeds"]["data"],
    script:
        "../scripts/stage.py"


rule select_sets:
    input:
        shards=expand("results/data/laion/{shard}.tar", shard=SHARDS),
        heldout_shards=expand("results/data/laion/{shard}.tar", shard=HELDOUT_SHARDS),
    output:
        **P.select_outputs(),
    log:
        "logs/select_sets/{target}.log",
    benchmark:
        "results/benchmarks/select_sets/{target}.tsv"
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        code=code_of("select_sets"),
        target=lambda wc: P.target_config(wc.target),
        target_id=lambda wc: wc.target,
        # a shared retain set is select_retain's: its size reruns only that
        retain_size=None if SHARED_RETAIN else config["selection"]["retain_size"],
        heldout_fraction=HELDOUT_FRACTION,
        seed=config["seeds"]["data"],
    script:
        "../scripts/stage.py"


# one retain set for every target (selection.shared_retain): captions naming
# none of them; its gradient is then one pass per model
if SHARED_RETAIN:

    rule select_retain:
        input:
            shards=expand("results/data/laion/{shard}.tar", shard=SHARDS),
        output:
            retain=f"results/data/{SHARED}/retain.tar",
            summary=f"results/data/{SHARED}/retain_summary.json",
        log:
            f"logs/select_retain/{SHARED}.log",
        benchmark:
            f"results/benchmarks/select_retain/{SHARED}.tsv"
        conda:
            "../../envs/data.yaml"
        resources:
            mem_mb=2000,
            runtime=60,
        params:
            code=code_of("select_retain"),
            # every target: adding one changes the set (and so reruns what uses it)
            targets={tid: TARGETS[tid] for tid in sorted(TARGETS)},
            retain_size=config["selection"]["retain_size"],
            heldout_fraction=HELDOUT_FRACTION,
            seed=config["seeds"]["data"],
        script:
            "../scripts/stage.py"


rule data:
    input:
        P.data_outputs(),
