"""A latent tiny text-to-image model, for comparison with the pixel-space
default: a diffusers AutoencoderKL (32 px -> 8 x 8 x 4 latents) trained on a
finished default RUN's shards, then an x0-predicting UNet on its latents,
conditioned on RUN's CLIP text tower. Saved in the pipeline's model layout, so
the variants script judges it:

    .venv/bin/python scripts/t2i_latent_prototype.py RUN OUT --ae-steps 1000 --unet-steps 3000
    .venv/bin/python scripts/t2i_generator_variants.py RUN --model OUT --sampling 'ddim25={}'

Not a pipeline option (docs/fidelity.md item 12, fourth pass): it is what
issue 17 measured about a latent space, before deciding to build one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main(argv=None) -> int:
    import torch
    import torch.nn.functional as F
    import yaml
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from unlearnflow.models import diffusion as D
    from unlearnflow.models.clip import load_clip, load_pairs
    from unlearnflow.training import LossBar, lr_at, train_steps

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--ae-steps", type=int, default=1000)
    ap.add_argument("--ae-channels", type=json.loads, default=[16, 32, 64])
    ap.add_argument("--unet-steps", type=int, default=3000)
    ap.add_argument("--unet-channels", type=json.loads, default=[64, 96, 128])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    res = args.run / "results"
    images, caps = load_pairs([res / f"data/laion/{s}.tar" for s in cfg["data"]["shards"]], 32)
    x_all = images.float() / 127.5 - 1
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    def fit(module, steps, lr, weight_decay, batches, loss_fn, desc):
        """AdamW, warm-up then cosine, gradients clipped at 1: the tiny trainer's loop."""
        opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
        bar = LossBar(steps, desc, every=100)
        module.train()
        train_steps(
            opt, batches, loss_fn, on_step=bar,
            lr=lambda s: lr_at(s, lr=lr, total=steps, warmup_steps=20, angle_first=True),
            grad_hook=lambda: torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0),
        )  # fmt: skip
        bar.close()
        module.eval()
        return bar.summary("cpu")

    # 1. the autoencoder: L1 + MSE reconstruction, a light KL term
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=args.ae_channels, layers_per_block=1, latent_channels=4, norm_num_groups=16, sample_size=32,
    )  # fmt: skip

    def ae_loss(x):
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        return F.mse_loss(rec, x) + F.l1_loss(rec, x) + 1e-4 * post.kl().mean() / x[0].numel()

    ae_batches = (x_all[torch.randint(0, len(x_all), (32,), generator=gen)] for _ in range(args.ae_steps))
    ae = fit(vae, args.ae_steps, 2e-3, 0.0, ae_batches, ae_loss, "train the autoencoder")
    with torch.no_grad():
        lat = torch.cat([vae.encode(x_all[i : i + 256]).latent_dist.mean for i in range(0, len(x_all), 256)])
    vae.register_to_config(scaling_factor=float(1 / lat.std()))
    # 2. the UNet on the scaled latents (no clipping of x0: latents are not in [-1, 1])
    clip = load_clip(res / "models" / cfg["clip"]["name"])
    te, tok = D.hf_text_encoder_from_open_clip(clip.model, clip.tokenizer)
    unet = UNet2DConditionModel(**{
        **D.TINY_UNET, "sample_size": 8, "in_channels": 4, "out_channels": 4, "norm_num_groups": 16,
        "block_out_channels": args.unet_channels, "cross_attention_dim": te.config.hidden_size,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    })  # fmt: skip
    sched = DDPMScheduler(**{**D.TINY_SCHEDULER, "clip_sample": False})
    b = D.T2IBundle(unet, sched, te, tok, vae, args.out, {})
    with torch.no_grad():
        states, empty = b.encode_prompts(caps), b.encode_prompts([""])
    z_all = lat * vae.config.scaling_factor

    def unet_batches():
        for _ in range(args.unet_steps):
            idx = torch.randint(0, len(z_all), (32,), generator=gen)
            ctx = states[idx].clone()
            ctx[torch.rand(32, generator=gen) < 0.1] = empty
            yield z_all[idx], ctx

    un = fit(unet, args.unet_steps, 1e-3, 0.01, unet_batches(), lambda batch: D.noise_loss(b, *batch, gen), "train the latent UNet")
    info = {"source": "latent prototype (scripts/t2i_latent_prototype.py)", "ae_s": ae["seconds"], "unet_s": un["seconds"],
            "parameters": {"vae": sum(p.numel() for p in vae.parameters()), "unet": sum(p.numel() for p in unet.parameters())}}  # fmt: skip
    D.save_t2i({"unet": unet, "scheduler": sched, "text_encoder": te, "tokenizer": tok, "vae": vae}, args.out, info)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
