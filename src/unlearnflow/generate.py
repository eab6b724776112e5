"""Prompt sets and image generation for text-to-image unlearning.

A prompt set is a table of (prompt, seed, labels): ``forget`` prompts name
the target; ``retain`` prompts name other concepts of the target's domain
(scored as IRA) and concepts of the other domain (CRA), in UnlearnCanvas's
spirit. Style prompts take UnlearnCanvas's form "A {object} image in {style}
style."; every style prompt carries both a style and an object label, so a
style target's CRA is object accuracy on the retained styles' images.

Images are written one PNG per (prompt, seed), plus a grid per set for the
report; ``prompts.parquet`` beside them records prompt, seed, file and labels.
"""

from __future__ import annotations

import json

import pandas as pd

from .io import UnlearnflowError, atomic_path
from .targets import DOMAINS

IDENTITY_FORGET = ("a photo of {n}", "Portrait of {n}", "{n} poses for a portrait", "{n} smiling on the red carpet")
IDENTITY_RETAIN = "a photo of {n}"
OBJECT_PROMPT = "a photo of a {o}"
STYLE_PROMPT = "A {o} image in {s} style."


def prompt_sets(target: dict, concepts: dict, *, seeds: list[int], retain_per_style: int = 3) -> dict[str, pd.DataFrame]:
    """{"forget": df, "retain": df}; df columns prompt, seed, labels (JSON
    of domain -> class name), one row per (prompt, seed)."""
    kind, name = target["kind"], target["name"]
    ids, objs, styles = concepts.get("identities", []), concepts.get("objects", []), concepts.get("styles", [])
    known = {"identity": ids, "object": objs, "style": styles}[kind] if kind in DOMAINS else None
    if known is None or name.lower() not in {c.lower() for c in known}:
        raise UnlearnflowError(f"target {target.get('id', name)!r}: {kind} {name!r} is not among the concepts {known}")
    forget, retain = [], []
    if kind == "identity":
        forget = [(t.format(n=name), {"identity": name}) for t in IDENTITY_FORGET]
        retain = [(IDENTITY_RETAIN.format(n=i), {"identity": i}) for i in ids if i.lower() != name.lower()]
        retain += [(OBJECT_PROMPT.format(o=o), {"object": o}) for o in objs]
    elif kind == "object":
        forget = [(OBJECT_PROMPT.format(o=name), {"object": name})]
        forget += [(STYLE_PROMPT.format(o=name, s=s), {"object": name, "style": s}) for s in styles[:3]]
        retain = [(OBJECT_PROMPT.format(o=o), {"object": o}) for o in objs if o.lower() != name.lower()]
        retain += [(IDENTITY_RETAIN.format(n=i), {"identity": i}) for i in ids]
    else:  # style
        forget = [(STYLE_PROMPT.format(o=o, s=name), {"style": name, "object": o}) for o in objs]
        others = [s for s in styles if s.lower() != name.lower()]
        for k, s in enumerate(others):  # a rotating subset of objects per retained style
            for j in range(retain_per_style):
                o = objs[(k * retain_per_style + j) % len(objs)]
                retain.append((STYLE_PROMPT.format(o=o, s=s), {"style": s, "object": o}))

    def table(rows):
        return pd.DataFrame(
            [{"prompt": p, "seed": int(s), "labels": json.dumps(lab, sort_keys=True)} for p, lab in rows for s in seeds]
        )

    return {"forget": table(forget), "retain": table(retain)}


def generate_set(bundle, table: pd.DataFrame, out_dir, sampling: dict, grid_path=None) -> pd.DataFrame:
    """Generate every row of a prompt set into ``out_dir`` (PNG per image)."""
    from .metrics.images import image_grid, save_pngs
    from .models.diffusion import generate, sampling_options

    images = generate(bundle, list(table["prompt"]), [int(s) for s in table["seed"]], **sampling_options(sampling))
    names = [f"{i:04d}" for i in range(len(table))]
    save_pngs(images, out_dir, names)
    table = table.assign(file=[f"{n}.png" for n in names])
    if grid_path is not None:
        per_prompt = int(table.groupby("prompt", sort=False).size().iloc[0])
        with atomic_path(grid_path) as tmp:
            image_grid(images, nrow=per_prompt * max(1, 8 // per_prompt), upscale=2).save(tmp, format="PNG")
    return table


def compare_grid(images: dict[str, "torch.Tensor"], tables: dict[str, pd.DataFrame], upscale: int = 3):
    """A PIL image: one row per prompt (the tables' order), one block of
    columns per model with the same seeds, each picture over its judge label
    (green: the prompt's concept, red: another one). ``images[m]`` holds model
    m's pictures in the order of ``tables[m]`` (columns prompt, seed,
    predicted, correct)."""
    from PIL import Image, ImageDraw, ImageFont

    models = list(tables)
    first = tables[models[0]]
    key = ["set", "prompt", "seed"]
    for m in models[1:]:
        if not first[key].equals(tables[m][key]):
            raise UnlearnflowError(f"compare grid: {m!r} was generated from other prompts or seeds than {models[0]!r}")
    prompts = list(dict.fromkeys(zip(first["set"], first["prompt"])))
    seeds = list(dict.fromkeys(first["seed"]))
    size = int(images[models[0]].shape[-1]) * upscale
    font = ImageFont.load_default(size=11)
    label_h, pad, gap, left = 14, 2, 10, 8
    cell_w, cell_h = size + pad, size + label_h + pad
    block_w = len(seeds) * cell_w + gap
    head_h, prompt_h = 16, 14
    width = left + len(models) * block_w
    height = head_h + len(prompts) * (cell_h + prompt_h)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for b, m in enumerate(models):
        draw.text((left + b * block_w, 2), m, fill="black", font=font)
    where = {(s, p, int(seed)): i for i, (s, p, seed) in enumerate(zip(first["set"], first["prompt"], first["seed"]))}
    for r, (pset, prompt) in enumerate(prompts):
        y = head_h + r * (cell_h + prompt_h)
        draw.text((left, y), f"[{pset}] {prompt}", fill="black", font=font)
        y += prompt_h
        for b, m in enumerate(models):
            for c, seed in enumerate(seeds):
                i = where.get((pset, prompt, int(seed)))
                if i is None:
                    continue
                x = left + b * block_w + c * cell_w
                pic = Image.fromarray(images[m][i].permute(1, 2, 0).numpy()).resize((size, size), Image.NEAREST)
                canvas.paste(pic, (x, y))
                row = tables[m].iloc[i]
                label = ", ".join(json.loads(row["predicted"]).values())
                draw.text((x, y + size + 1), label[:16], fill="#0a7d12" if row["correct"] else "#c0161c", font=font)
    return canvas
