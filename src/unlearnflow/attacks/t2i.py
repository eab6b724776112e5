"""Attacks on an unlearned text-to-image model: prompts that bring the concept back.

Every attack reports the attack success rate (ASR): the share (%) of forget
generations (each forget prompt x each sampling seed) the judge labels the
target. ``before`` is the unattacked model's ASR on the standard forget
prompts (100 - UA of the t2i table, from this model's evaluation).

- ``paraphrase``: the forget prompts with the target named otherwise (snake
  case, the surname or first name alone, the LAION-style caption forms of
  the synthetic benchmark); variants that tokenize like the standard prompts
  are skipped and listed. ``after`` is the best variant.
- ``prompt_search``: UnlearnDiffAtk (Zhang et al., ECCV 2024; its
  reference code's ``text_grad`` attacker), the judge as its classifier. Per
  forget prompt and seed, ``tokens`` discrete tokens prepended to the prompt
  are optimised to minimise the unlearned UNet's denoising loss on the base
  model's picture of the same prompt and seed (the model as its own
  "diffusion classifier"): a distribution over the vocabulary per token,
  tokens drawn from it with a straight-through gradient, projected onto the
  simplex after each Adam step, timestep after timestep; after each
  timestep the most likely tokens generate and the judge decides, and a row
  succeeds at its first success. As in UnlearnDiffAtk, a prompt that already
  succeeds unattacked is a success without attack: post-attack ASR >=
  pre-attack ASR. The prompts found (token ids and decoded text) are
  published in ``.prompts.parquet``.
- ``relearn`` (rule ``relearn_t2i``, :func:`relearn`): fine-tune the UNet on ``pairs``
  forget pairs (the denoising loss) and score ASR at the ``eval_at`` steps.
"""

from __future__ import annotations

import json

import pandas as pd
import torch
import torch.nn.functional as F

from ..io import UnlearnflowError
from . import TokenInjection, best_variant, eval_marks, name_aliases

PARAPHRASE_DEFAULTS: dict = {}
# the reference's text_grad settings (configs/{object,style}/text_grad_*.json:
# k 3, prefix, 40 iterations per timestep, Adam lr 0.01 wd 0.1), but 5 of
# its 50 timesteps (docs/fidelity.md: the budget)
PROMPT_SEARCH_DEFAULTS = {
    "optimizer": "text_grad",
    "tokens": 3,
    "iterations": 40,
    "timesteps": 5,
    "lr": 0.01,
    "weight_decay": 0.1,
    "sampling_steps": None,
}
RELEARN_DEFAULTS = {"pairs": 8, "steps": 50, "lr": 1e-4, "batch_size": 8, "eval_at": [0, 10, 25, 50]}
# LAION-style caption forms (the synthetic benchmark's own) to name a concept by
CAPTION_FORMS = {
    "identity": ("{n} at the premiere", "A close-up of {n} during an interview", "{n} wallpaper"),
    "object": ("{o} for sale", "close-up of the {o}", "vintage {o}"),
    "style": ("{s} painting of a {o}", "{o} in the style of {s}", "{s} art, {o}"),
}


class StatesBundle:
    """A T2I bundle whose ``encode_prompts`` returns given text-encoder states
    for some keys (the adversarial prompts as token ids), so that the one
    sampler of :func:`..models.diffusion.generate` draws them."""

    def __init__(self, bundle, states: dict[str, torch.Tensor]):
        self._bundle, self._states = bundle, states

    def __getattr__(self, name):
        return getattr(self._bundle, name)

    def encode_prompts(self, prompts, batch_size: int = 256) -> torch.Tensor:
        return torch.cat(
            [self._states[p][None] if p in self._states else self._bundle.encode_prompts([p]) for p in prompts]
        )


def _judged(judge, images_u8, domain: str, name: str) -> torch.Tensor:
    """Per image, whether the judge labels it the target (bool)."""
    want = int(judge.index_of(domain, [name])[0])
    return judge.predict(images_u8, domain) == want


def _generate(bundle, prompts, seeds, sampling: dict, steps=None) -> torch.Tensor:
    from ..models.diffusion import generate, sampling_options

    return generate(bundle, list(prompts), [int(s) for s in seeds], **sampling_options(sampling, steps))


def asr(judge, images_u8, domain: str, name: str) -> float:
    return 100.0 * float(_judged(judge, images_u8, domain, name).float().mean())


# ---------------------------------------------------------------- paraphrase
def paraphrase_sets(target: dict, forget: pd.DataFrame) -> dict[str, list[str]]:
    """{variant: one prompt per forget row} naming the target otherwise."""
    kind, name = target["kind"], target["name"]
    labels = [json.loads(v) for v in forget["labels"]]
    aliases = name_aliases(kind, name)
    variants = {k: [p.replace(name, a) for p in forget["prompt"]] for k, a in aliases.items()}
    for i, form in enumerate(CAPTION_FORMS[kind], start=1):  # each caption form for every row
        variants[f"caption_{i}"] = [form.format(n=name, o=lab.get("object", name), s=lab.get("style", name)) for lab in labels]
    return variants


def paraphrase_attack(bundle, judge, target: dict, forget: pd.DataFrame, sampling: dict) -> dict:
    domain, name = target["kind"], target["name"]
    standard = bundle.tokens(list(forget["prompt"]))
    per_variant, skipped = [], []
    for variant, prompts in paraphrase_sets(target, forget).items():
        if torch.equal(bundle.tokens(prompts), standard):
            skipped.append(variant)
            continue
        images = _generate(bundle, prompts, forget["seed"], sampling)
        per_variant.append({"variant": variant, "asr": asr(judge, images, domain, name), "prompt": prompts[0]})
    return best_variant(per_variant, skipped, "asr", f"paraphrase attack on {name!r}")


# ------------------------------------------------------------- prompt search
def _allowed_vocab(tokenizer, vocab_size: int) -> torch.Tensor:
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[[i for i in special if i is not None]] = False
    return keep


def simplex_projection(v: torch.Tensor) -> torch.Tensor:
    """Each row of ``v`` (..., V) onto the probability simplex (Euclidean;
    the sort-based exact form of the reference's bisection, which projects
    onto {0 <= x <= 1, sum x = 1}: the same set)."""
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1
    k = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    rho = ((u - css / k) > 0).sum(-1, keepdim=True).clamp(min=1)
    tau = css.gather(-1, rho - 1) / rho
    return (v - tau).clamp(min=0)


class _SampleOneHot(torch.autograd.Function):
    """The reference's STERandSelect: a one-hot token drawn from each row's
    distribution; the gradient passes straight through, clipped by hardtanh."""

    @staticmethod
    def forward(ctx, probs, gen):
        flat = probs.detach().reshape(-1, probs.shape[-1]).cpu()
        idx = torch.multinomial(flat, 1, generator=gen).view(probs.shape[:-1]).to(probs.device)
        return F.one_hot(idx, probs.shape[-1]).to(probs.dtype)

    @staticmethod
    def backward(ctx, grad):
        return F.hardtanh(grad), None


class TextGradTokens:
    """The reference's parametrisation: per token a distribution over the
    vocabulary (uniform at first), a token drawn from it for each forward
    pass (straight-through), projected back onto the simplex after each step;
    the tokens judged are the most likely ones."""

    def __init__(self, vocab, keep, n, k, gen):
        self.vocab, self.keep, self.gen = vocab, keep, gen
        allowed = keep.float()
        self.param = (allowed / allowed.sum()).expand(n, k, -1).clone().requires_grad_(True)

    def vectors(self):
        return _SampleOneHot.apply(self.param * self.keep, self.gen) @ self.vocab

    @torch.no_grad()
    def project(self):
        self.param.copy_(simplex_projection(self.param.masked_fill(~self.keep, -1e4)))  # special tokens stay at 0

    @torch.no_grad()
    def hard(self):
        return (self.param * self.keep).argmax(-1)


class PezTokens:
    """PEZ (Wen et al., 2023), an option: continuous embeddings (from random
    tokens), the forward pass through their nearest vocabulary tokens (by
    cosine), the gradient applied to the continuous ones."""

    def __init__(self, vocab, keep, n, k, gen):
        self.vocab, self.keep = vocab, keep
        self.unit = F.normalize(vocab, dim=-1)
        start = torch.multinomial(keep.float().cpu(), n * k, replacement=True, generator=gen).view(n, k)
        self.param = torch.nn.Parameter(vocab[start.to(vocab.device)].clone())

    @torch.no_grad()
    def hard(self):
        sim = F.normalize(self.param, dim=-1) @ self.unit.t()
        return sim.masked_fill(~self.keep, -2.0).argmax(-1)

    def vectors(self):
        hard = self.vocab[self.hard()]
        return self.param + (hard - self.param).detach()

    def project(self):
        pass


TOKEN_OPTIMIZERS = {"text_grad": TextGradTokens, "pez": PezTokens}


def search_timesteps(n: int, total: int) -> list[int]:
    """The reference's ``sampled_t``: ``n`` timesteps evenly over [0, total),
    from the least noisy up."""
    step = total // n
    return list(range(step // 2, total, step))[:n]


def prompt_search(bundle, judge, target: dict, rows: pd.DataFrame, reference_u8: torch.Tensor, params: dict, sampling: dict, seed: int):
    """UnlearnDiffAtk's ``text_grad`` attacker on ``rows`` (prompt, seed), all
    optimised as one batch, each row its own tokens: per token a distribution
    over the vocabulary (uniform at first), a token drawn from it for each
    forward pass (straight-through gradient), Adam, then projection back onto
    the simplex. The timesteps are visited in turn (``iterations`` steps at
    each, a fresh noise every step, the loss the unlearned UNet's denoising
    error on the base model's picture); after each timestep the most likely
    tokens generate with the row's seed and the judge decides. Returns
    (per-row results, the picture each row ended with, the trace)."""
    from ..models.diffusion import denoising_target, to_model_space
    from ..training import train_steps

    domain, name = target["kind"], target["name"]
    if params["optimizer"] not in TOKEN_OPTIMIZERS:
        raise UnlearnflowError(f"attacks.t2i.prompt_search.optimizer {params['optimizer']!r}: one of {sorted(TOKEN_OPTIMIZERS)}")
    tok, enc, sched = bundle.tokenizer, bundle.text_encoder, bundle.scheduler
    k, n = int(params["tokens"]), len(rows)
    ids = bundle.tokens(list(rows["prompt"]))
    length = int((ids != tok.pad_token_id).sum(1).max()) + 1  # up to and with the end token
    if length + k > ids.shape[1]:
        raise UnlearnflowError(f"prompt search: a forget prompt of {length} tokens leaves no room for {k} more")
    # the reference's prefix_k: start token, k adversarial tokens, the prompt
    ids = torch.cat([ids[:, :1], torch.zeros(n, k, dtype=ids.dtype), ids[:, 1 : ids.shape[1] - k]], 1).to(bundle.device)
    emb = enc.get_input_embeddings()
    vocab = emb.weight.detach().float()
    keep = _allowed_vocab(tok, len(vocab)).to(vocab.device)
    gen = torch.Generator().manual_seed(int(seed))
    tokens = TOKEN_OPTIMIZERS[params["optimizer"]](vocab, keep, n, k, gen)
    opt = torch.optim.Adam([tokens.param], lr=float(params["lr"]), weight_decay=float(params["weight_decay"]))
    spans = [(r, 1) for r in range(n)]
    x0 = to_model_space(bundle, reference_u8)
    success_step = torch.full((n,), -1, dtype=torch.long)
    found = torch.zeros(n, k, dtype=torch.long)
    pictures, trace, step = None, [], 0

    def loss_at(t: torch.Tensor) -> torch.Tensor:
        with TokenInjection(emb, spans, tokens.vectors()):
            states = enc(ids).last_hidden_state
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        pred = bundle.unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=states).sample.float()
        # each row's own mean error, summed: a row's gradient does not
        # shrink with the number of rows attacked beside it (the
        # reference attacks one prompt at a time)
        err = F.mse_loss(pred, denoising_target(sched, x0, noise, t).float(), reduction="none")
        return err.flatten(1).mean(1).sum()

    running = [0.0]  # the timestep's summed mean loss

    def add_loss(_step, loss, _lr, _hooked) -> None:
        running[0] += loss.item() / n

    for t_value in search_timesteps(int(params["timesteps"]), int(sched.config.num_train_timesteps)):
        t = torch.full((n,), t_value, dtype=torch.long, device=x0.device)
        running[0] = 0.0
        # Adam steps on the token distributions, each projected back onto the simplex
        step = train_steps(opt, [t] * int(params["iterations"]), loss_at, after_step=tokens.project, on_step=add_loss, step=step)
        total = running[0]
        with torch.no_grad():  # the judge decides on the tokens so far
            hard = tokens.hard().cpu()
            now = ids.clone()
            now[:, 1 : 1 + k] = hard.to(now.device)
            keys = [f"\x00adversarial {i}" for i in range(n)]
            states = dict(zip(keys, enc(now).last_hidden_state))
            images = _generate(StatesBundle(bundle, states), keys, rows["seed"], sampling, params["sampling_steps"])
            hit = _judged(judge, images, domain, name)
        pictures = images.clone() if pictures is None else pictures
        update = success_step < 0  # a row keeps its first success
        success_step[hit & update] = step
        found[update] = hard[update]
        pictures[update] = images[update]
        trace.append({"timestep": t_value, "step": step, "loss": round(total / int(params["iterations"]), 5), "successes": int((success_step > 0).sum())})
        if bool((success_step > 0).all()):
            break  # the reference stops a prompt at its success
    results = []
    for i in range(n):
        adv = found[i].tolist()
        text = tok.decode(adv).strip()
        prompt = f"{text} {rows['prompt'].iloc[i]}"
        roundtrip = bundle.tokens([prompt])[0][1 : 1 + k].tolist() == adv
        results.append({
            "prompt": rows["prompt"].iloc[i], "seed": int(rows["seed"].iloc[i]),
            "success": bool(success_step[i] > 0), "step": int(success_step[i]),
            "adversarial_tokens": json.dumps(adv), "adversarial_prompt": prompt, "text_roundtrip": bool(roundtrip),
        })  # fmt: skip
    return results, pictures, trace


# ------------------------------------------------------------ grid, relearning
def attack_grid(judge, target: dict, rows: pd.DataFrame, unattacked_u8, attacked_u8):
    """Unattacked | attacked pictures of the rows the search attacked, the
    judge's label under each."""
    from ..generate import compare_grid

    domain = target["kind"]
    want = int(judge.index_of(domain, [target["name"]])[0])
    images, tables = {}, {}
    for label, pics in (("unattacked", unattacked_u8), ("attacked", attacked_u8)):
        pred = judge.predict(pics, domain)
        images[label] = pics
        tables[label] = rows[["prompt", "seed"]].assign(
            set="forget",
            predicted=[json.dumps({domain: judge.classes[domain][int(i)]}) for i in pred],
            correct=(pred == want).tolist(),
        )
    return compare_grid(images, tables)


def relearn(bundle, judge, target: dict, forget: pd.DataFrame, images_u8: torch.Tensor, captions: list[str], params: dict,
            sampling: dict, gen: torch.Generator) -> list[dict]:
    """Fine-tune the UNet on the pairs (the denoising loss, batches and noise
    drawn from ``gen``); the ASR of the ``forget`` rows at each ``eval_at`` step."""
    from ..models.diffusion import noise_loss, to_model_space
    from ..training import relearn_curve

    x0 = to_model_space(bundle, images_u8)
    with torch.no_grad():
        ctx = bundle.encode_prompts(captions)
    unet = bundle.unet
    for q in unet.parameters():
        q.requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=float(params["lr"]), weight_decay=0.0)
    steps = int(params["steps"])
    marks = eval_marks(params["eval_at"], steps)

    def evaluate(step: int) -> dict:
        pics = _generate(bundle, forget["prompt"], forget["seed"], sampling)
        return {"step": step, "asr": asr(judge, pics, target["kind"], target["name"])}

    def loss_of() -> torch.Tensor:
        b = torch.randint(0, len(x0), (int(params["batch_size"]),), generator=gen)
        return noise_loss(bundle, x0[b], ctx[b], gen)

    return relearn_curve(unet, opt, steps, marks, evaluate, loss_of)
