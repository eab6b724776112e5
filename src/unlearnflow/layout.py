"""Where every file lives: model folders and the results tree.

One module for the library (the model loaders name their files from here)
and the Snakefile (rules and input functions build paths from here), so a
file cannot be written under one name and looked for under another. Plain
strings and the standard library only: the Snakefile imports it while
building the DAG. A ``{name}`` in a pattern is a Snakemake wildcard, left
in place unless a value is given.
"""

from __future__ import annotations

# ------------------------------------------------------------ model folders
CLIP_CONFIG = "open_clip_config.json"
CLIP_WEIGHTS = "open_clip_model.safetensors"
CLIP_INFO = "model.json"
T2I_INFO = "model.json"
T2I_UNET = "unet/diffusion_pytorch_model.safetensors"
T2I_TEXT_ENCODER = "text_encoder/model.safetensors"
I2I_CONFIG = "i2i_config.json"
I2I_WEIGHTS = "i2i_model.safetensors"
I2I_INFO = "i2i_model.json"  # not model.json: a CLIP folder of the same name would collide
JUDGE_INFO = "judge.json"
JUDGE_WEIGHTS = "judge.safetensors"

MODELS = "results/models"
SHARED = "shared"  # the retain set's folder in place of a target id (selection.shared_retain)


def model_dir(model="{model}") -> str:
    return f"{MODELS}/{model}"


def clip_files(model="{model}") -> dict:
    d = model_dir(model)
    return {"config": f"{d}/{CLIP_CONFIG}", "weights": f"{d}/{CLIP_WEIGHTS}", "info": f"{d}/{CLIP_INFO}"}


def t2i_files(model="{t2i}") -> dict:
    d = model_dir(model)
    return {"model": f"{d}/{T2I_INFO}", "unet": f"{d}/{T2I_UNET}", "text_encoder": f"{d}/{T2I_TEXT_ENCODER}"}


def i2i_files(model="{model}") -> dict:
    d = model_dir(model)
    return {"config": f"{d}/{I2I_CONFIG}", "weights": f"{d}/{I2I_WEIGHTS}", "info": f"{d}/{I2I_INFO}"}


def judge_dir(name) -> str:
    return f"{MODELS}/judge/{name}"


# ------------------------------------------------------------ data
def target_set(target="{target}", name="{set}") -> str:
    """A target's set: forget, retain (own, or the shared one), heldout."""
    return f"results/data/{target}/{name}.tar"


def eval_set(evalset="{evalset}", split="{split}") -> str:
    return f"results/data/eval/{evalset}/{split}.tar"


def eval_classes(evalset="{evalset}") -> str:
    return f"results/data/eval/{evalset}/classes.json"


def eval_set_files(split, sets) -> dict:
    """{SET_SPLIT: tar, SET_classes: json}: the names metrics.clip_eval.eval_sets_from reads."""
    files = {}
    for s in sets:
        files[f"{s}_{split}"] = eval_set(s, split)
        files[f"{s}_classes"] = eval_classes(s)
    return files


# ------------------------------------------------------------ CLIP branch
def clip_grad(model="{model}", target="{target}", name="{set}") -> str:
    return f"results/grads/{model}/{target}/{name}.safetensors"


def layer_table(model="{model}", target="{target}") -> str:
    return f"results/layers/{model}/{target}.parquet"


def clip_mask(model, target, fraction) -> str:
    return f"results/masks/{model}/{target}/salun_{float(fraction)}.safetensors"


def clip_run(model="{model}", target="{target}", run="{method}") -> str:
    return f"results/unlearn/{model}/{target}/{run}"


# ------------------------------------------------------------ text-to-image
def t2i_mask(model, target, fraction) -> str:
    return f"results/masks/{model}/{target}/unet_salun_{float(fraction):g}.safetensors"


def t2i_run(model="{t2i}", target="{target}", method="{method}") -> str:
    return f"results/unlearn_t2i/{model}/{target}/{method}"


# ------------------------------------------------------------ image-to-image
def i2i_set(name) -> str:
    return f"results/data/i2i/{name}.tar"


def i2i_run(model="{model}", method="{method}") -> str:
    return f"results/unlearn_i2i/{model}/{method}"


def delta(run_dir) -> str:
    return f"{run_dir}/delta.safetensors"


# ------------------------------------------------------------ tables
def table(name, ext) -> str:
    return f"results/tables/{name}.{ext}"


def tables(name, exts=("csv", "md", "tex")) -> list:
    return [table(name, e) for e in exts]
