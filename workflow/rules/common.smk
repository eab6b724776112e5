# Config lookups shared by the rules, and nothing else: functions only, so
# the files that define rules stay pure wiring. No torch import here, since
# building the DAG must stay fast.
import re

SHARDS = list(config["data"]["shards"])
TARGETS = {t["id"]: t for t in config["targets"]}
EVAL_SETS = ["identities", "objects", "styles"]
SPLITS = ["val", "test"]


def check_targets():
    ids = [t["id"] for t in config["targets"]]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"config targets: duplicate id(s) {dup}")
    if config["data"]["source"] != "synthetic":
        return
    syn = config["data"]["synthetic"]
    known = {
        "identity": syn["identities"],
        "object": syn["objects"],
        "style": syn["styles"],
    }
    for t in config["targets"]:
        names = known[t["kind"]]
        if t["name"].lower() not in {n.lower() for n in names}:
            raise ValueError(
                f"config targets: {t['id']!r} names {t['kind']} {t['name']!r}, "
                f"which the synthetic benchmark does not draw; "
                f"known {t['kind']} names: {names}"
            )


check_targets()


def target_config(target_id):
    if target_id not in TARGETS:
        raise ValueError(
            f"unknown target {target_id!r}; known targets: {sorted(TARGETS)}"
        )
    return TARGETS[target_id]


def one_of(values):
    """A wildcard constraint matching exactly these values (or nothing)."""
    return "|".join(re.escape(v) for v in values) or "(?!x)x"


def synthetic_concepts():
    """What every synthetic picture depends on (its signatures)."""
    syn = config["data"]["synthetic"]
    return {
        "seed": config["seeds"]["data"],
        "image_size": syn["image_size"],
        "identities": syn["identities"],
        "objects": syn["objects"],
        "styles": syn["styles"],
        "jpeg_quality": syn["jpeg_quality"],
    }


def synthetic_shard_spec():
    syn = config["data"]["synthetic"]
    return synthetic_concepts() | {
        "samples_per_shard": syn["samples_per_shard"],
        "mix": syn["mix"],
        "failure_rate": syn["failure_rate"],
    }


def eval_sets_from(source):
    return [s for s in EVAL_SETS if config["data"]["eval"][s]["source"] == source]


def data_outputs():
    return expand(
        "results/data/{target}/{name}",
        target=sorted(TARGETS),
        name=["forget.tar", "retain.tar", "summary.json"],
    ) + expand(
        "results/data/eval/{evalset}/{name}",
        evalset=EVAL_SETS,
        name=["val.tar", "test.tar", "classes.json"],
    )
