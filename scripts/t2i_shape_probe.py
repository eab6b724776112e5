"""Can the default tiny text-to-image UNet draw object shapes at all? Train it
from scratch on the object photos of a finished default RUN's shards only
(captions naming an object and no style or person), then look at its pictures.

    .venv/bin/python scripts/t2i_shape_probe.py RUN OUT --steps 4000
    .venv/bin/python scripts/t2i_generator_variants.py RUN --model OUT

OUT is a model folder (RUN's tiny_t2i with the retrained UNet). What issue
17's fourth pass measured (docs/fidelity.md item 12): at 1000 steps of batch 32
the pictures are blobs of the object's colour, at 4000 they show its shape.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main(argv=None) -> int:
    import torch
    import yaml
    from diffusers import UNet2DConditionModel

    from unlearnflow.models import diffusion as D
    from unlearnflow.models.clip import load_pairs
    from unlearnflow.training import LossBar, lr_at, train_steps

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    syn = cfg["data"]["synthetic"]
    res = args.run / "results"
    b = D.load_t2i(res / "models" / cfg["t2i"]["name"])
    torch.manual_seed(0)
    b.unet = UNet2DConditionModel.from_config(b.unet.config)
    images, caps = load_pairs([res / f"data/laion/{s}.tar" for s in cfg["data"]["shards"]], b.image_size)
    objects = [re.compile(rf"\b{re.escape(o.lower())}\b") for o in syn["objects"]]
    others = [n.lower() for n in syn["styles"] + syn["identities"]]
    keep = [any(o.search(c.lower()) for o in objects) and not any(n in c.lower() for n in others) for c in caps]
    images = images[torch.tensor(keep)]
    caps = [c for c, k in zip(caps, keep) if k]
    print(f"{len(caps)} object photos, e.g. {caps[:3]}")
    with torch.no_grad():
        states, empty = b.encode_prompts(caps), b.encode_prompts([""])
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(b.unet.parameters(), lr=args.lr, weight_decay=0.01)
    b.unet.train().requires_grad_(True)

    def batches():
        for _ in range(args.steps):
            idx = torch.randint(0, len(caps), (32,), generator=gen)
            ctx = states[idx].clone()
            ctx[torch.rand(32, generator=gen) < 0.1] = empty
            yield D.to_model_space(b, images[idx]), ctx

    bar = LossBar(args.steps, "shape probe", every=100)
    train_steps(
        opt, batches(), lambda batch: D.noise_loss(b, *batch, gen), on_step=bar,
        lr=lambda s: lr_at(s, lr=args.lr, total=args.steps, warmup_steps=20, angle_first=True),
        grad_hook=lambda: torch.nn.utils.clip_grad_norm_(b.unet.parameters(), 1.0),
    )  # fmt: skip
    bar.close()
    shutil.copytree(b.model_dir, args.out, dirs_exist_ok=True)
    b.unet.eval().save_pretrained(args.out / "unet")
    print(f"wrote {args.out}: {bar.summary(b.device)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
