"""Robustness of unlearning: attacks that try to bring a forgotten concept back.

Each attack stage reads an evaluated model (the base model, or base + a
method's delta) and writes a parquet of rows in one layout, :data:`COLUMNS`:
the attack, the metric it raises, its value before the attack (the
unattacked model, the same number the results table shows) and after, the
budget the attack was given and its wall seconds. ``details`` (JSON) keeps
what a reader needs to check a row: per-variant values, the loss trace, the
relearning curve, the adversarial prompts.

- :mod:`.clip`: paraphrases and aliases of the target's name, a continuous
  prompt (soft token embeddings) searched by gradient on the frozen model,
  and relearning on a handful of forget pairs; metric FA@1 (%).
- :mod:`.t2i`: paraphrased prompts, an UnlearnDiffAtk-style adversarial
  prompt search (discrete tokens prepended, the denoising loss towards the
  base model's pictures, the judge in the loop), and relearning; metric
  attack success rate (ASR, % of generations the judge labels the target).

The embedding layer is shared by both families' text towers, so one helper,
:class:`TokenInjection`, puts optimised vectors where a prompt's tokens are.
"""

from __future__ import annotations

import contextlib
import json

import pandas as pd

from ..io import UnlearnflowError

COLUMNS = ["family", "target", "method", "attack", "metric", "before", "after", "budget", "seconds", "details", "provenance"]
TABLE_COLUMNS = ["family", "target", "method", "attack", "metric", "before", "after", "budget", "seconds", "provenance"]


def attack_record(model_fingerprint: str, delta, seed: int) -> str:
    """The provenance of an attack job's rows, as JSON: this job, the model
    attacked (base fingerprint, delta and the job that made it), the seed."""
    from .. import provenance

    return json.dumps(provenance.evaluation_record(model_fingerprint=model_fingerprint, delta=delta, seeds={"attack": int(seed)}), sort_keys=True, default=str)


def row(family, target, method, attack, metric, before, after, budget, seconds, job_record: str | None = None, **details) -> dict:
    return {
        "family": family,
        "target": target,
        "method": method,
        "attack": attack,
        "metric": metric,
        "before": float(before),
        "after": float(after),
        "budget": str(budget),
        "seconds": float(seconds),
        "details": json.dumps(details, sort_keys=True, default=float),
        "provenance": job_record,
    }


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


def merge_params(defaults: dict, given: dict | None, what: str) -> dict:
    """An attack's params over its module's defaults (the one source of
    them); the rule's ``enabled`` flag is not a param of the attack."""
    given = {k: v for k, v in (given or {}).items() if k != "enabled"}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise UnlearnflowError(f"{what}: unknown params {unknown}; known: {sorted(defaults)}")
    return defaults | given


def table_method(method: str) -> str:
    return "original" if method == "base" else method


def name_aliases(kind: str, name: str) -> dict[str, str]:
    """Other spellings of a concept's name: snake case, case, and for a
    person the surname or first name alone."""
    words = name.split()
    aliases = {"snake_case": name.replace(" ", "_"), "lower": name.lower(), "upper": name.upper()}
    if kind == "identity" and len(words) > 1:
        aliases |= {"surname": words[-1], "first_name": words[0]}
    return aliases


def best_variant(per_variant: list[dict], skipped: list[str], metric: str, what: str) -> dict:
    """The summary of a paraphrase attack: its best variant (the attacker's
    worst case for the method) and every variant's value."""
    if not per_variant:
        raise UnlearnflowError(f"{what}: every variant tokenizes as the standard prompt ({skipped})")
    best = max(per_variant, key=lambda v: v[metric])
    return {"after": best[metric], "best": best["variant"], "variants": per_variant, "same_tokens": skipped}


def eval_marks(eval_at, steps: int) -> list[int]:
    """The steps a relearning curve is scored at (0 and the last always)."""
    return sorted({int(s) for s in eval_at if 0 <= int(s) <= steps} | {0, steps})


def relearn_row(family: str, target: str, method: str, metric: str, curve: list[dict], p: dict, seconds: float, record: str, pairs) -> dict:
    """The row of a relearning stage: before = the curve's step 0, after = its last step."""
    budget = f"{p['pairs']} pairs x {p['steps']} steps, lr {p['lr']:g}"
    return row(family, target, table_method(method), "relearn", metric, curve[0][metric], curve[-1][metric], budget,
               seconds, record, curve=curve, pairs=sorted(pairs))  # fmt: skip


def no_attack_error(what: str) -> UnlearnflowError:
    return UnlearnflowError(f"{what}: every attack is disabled; enable one or drop the robustness table")


def name_token_ids(tokenizer, name: str) -> list[int]:
    """The token ids of ``name`` alone: its row without start and end tokens
    (the end token is the highest id, what open_clip pools at)."""
    ids = tokenizer([name])[0]
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    end = max(range(len(ids)), key=ids.__getitem__)
    return ids[1:end]


def find_span(tokens, ids: list[int], what: str) -> int:
    """Where ``ids`` start in a token row (the first match)."""
    row = tokens.tolist() if hasattr(tokens, "tolist") else list(tokens)
    for i in range(len(row) - len(ids) + 1):
        if row[i : i + len(ids)] == ids:
            return i
    raise UnlearnflowError(f"{what}: the tokens {ids} are not in the prompt's tokens {row[:16]}...")


class TokenInjection(contextlib.AbstractContextManager):
    """Inside the context, ``embedding`` (an ``nn.Embedding``) returns
    ``vectors`` at ``spans`` [(row, start)] of the token batch it is called
    on: a continuous prompt through an unchanged text tower, with gradients
    flowing to ``vectors``: (k, D) the same at every span, or (S, k, D) one
    set per span."""

    def __init__(self, embedding, spans: list[tuple[int, int]], vectors):
        self.embedding, self.spans, self.vectors = embedding, spans, vectors
        self._handle = None

    def _hook(self, module, args, out):
        out = out.clone()
        per_span = self.vectors.ndim == 3
        for i, (r, start) in enumerate(self.spans):
            v = self.vectors[i] if per_span else self.vectors
            out[r, start : start + len(v)] = v.to(out.dtype)
        return out

    def __enter__(self):
        self._handle = self.embedding.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False


# ------------------------------------------------------------------ table
def robustness_table(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Every attack row of every model, the base model first per target."""
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    if df.empty:
        raise UnlearnflowError("robustness table: no attack rows")
    df["_base"] = (df["method"] != "original").astype(int)
    order = {a: i for i, a in enumerate(dict.fromkeys(df["attack"]))}
    df["_attack"] = df["attack"].map(order)
    df = df.sort_values(["family", "target", "_base", "method", "_attack"], kind="stable")
    return df[TABLE_COLUMNS].reset_index(drop=True)


__all__ = [
    "COLUMNS", "TokenInjection", "attack_record", "best_variant", "eval_marks", "find_span", "frame",
    "merge_params", "name_aliases", "name_token_ids", "no_attack_error", "relearn_row", "robustness_table", "row",
    "table_method",
]  # fmt: skip
