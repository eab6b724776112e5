"""Forget and retain sets for a target, selected by caption.

Forget: every sample whose caption names the target (its name or an alias,
case-insensitive by default, on word boundaries, with spaces and
underscores interchangeable; an optional extra regular expression), scanned
across all configured shards.

Retain: samples whose caption names neither the target nor an alias,
disjoint from the forget set, of a configured size. The choice is a stable
hash of (seed, key), so it is deterministic for a seed, independent of
shard order, and grows monotonically with the size.

Both are written as webdataset tars keeping the original keys, captions and
files byte for byte; a JSON summary records counts and the matching rule.
Rerunning gives byte-identical tars.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..io import UnlearnflowError, stable_hash, write_json
from .shards import ShardWriter, iter_samples, read_captions

log = logging.getLogger(__name__)

# A "word character" for boundaries: a letter or digit (Unicode-aware), but
# not the underscore, so "Elon_Musk" is two words and "#Elon_Musk_2020" matches.
_NOT_PRECEDED_BY_ALNUM = r"(?<![^\W_])"
_NOT_FOLLOWED_BY_ALNUM = r"(?![^\W_])"


def name_regex(name: str, word_boundary: bool = True) -> str:
    """A regular expression for a name: tokens joined by spaces or underscores."""
    tokens = [t for t in re.split(r"[\s_]+", name.strip()) if t]
    if not tokens:
        raise UnlearnflowError(f"empty target name {name!r}")
    body = r"[\s_]+".join(re.escape(t) for t in tokens)
    if word_boundary:
        body = _NOT_PRECEDED_BY_ALNUM + body + _NOT_FOLLOWED_BY_ALNUM
    return body


@dataclass
class Matcher:
    """Decides whether a caption names a target."""

    name: str
    aliases: list[str] = field(default_factory=list)
    regex: str | None = None
    case_sensitive: bool = False
    word_boundary: bool = True

    def __post_init__(self):
        parts = [name_regex(n, self.word_boundary) for n in [self.name, *self.aliases]]
        if self.regex:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise UnlearnflowError(f"target {self.name!r}: bad regex {self.regex!r} ({exc})") from exc
            parts.append(f"(?:{self.regex})")
        flags = 0 if self.case_sensitive else re.IGNORECASE
        self.pattern = re.compile("|".join(f"(?:{p})" for p in parts), flags)

    @classmethod
    def from_target(cls, target: dict) -> "Matcher":
        return cls(
            name=target["name"],
            aliases=list(target.get("aliases") or []),
            regex=target.get("regex") or None,
            case_sensitive=bool(target.get("case_sensitive", False)),
            word_boundary=bool(target.get("word_boundary", True)),
        )

    def __call__(self, caption: str) -> bool:
        return self.pattern.search(caption) is not None

    def describe(self) -> dict:
        return {
            "name": self.name,
            "aliases": self.aliases,
            "regex": self.regex,
            "case_sensitive": self.case_sensitive,
            "word_boundary": self.word_boundary,
            "pattern": self.pattern.pattern,
        }


def select_sets(
    shards: list[str | Path],
    target: dict,
    retain_size: int,
    seed: int,
    forget_out,
    retain_out,
    summary_out,
    target_id: str | None = None,
) -> dict:
    """Scan ``shards``, write the forget and retain tars and the summary."""
    matcher = Matcher.from_target(target)
    target_id = target_id or target["name"]
    shards = [Path(s) for s in shards]
    if not shards:
        raise UnlearnflowError(f"target {target_id!r}: no shards to scan")

    # pass 1: captions only, to decide membership before writing anything
    forget_keys: set[tuple[int, str]] = set()
    candidates: list[tuple[int, int, str]] = []
    per_shard = {}
    scanned = 0
    examples = []
    for si, shard in enumerate(shards):
        n_forget = 0
        caps = read_captions(shard)
        for key, caption in caps:
            if matcher(caption):
                forget_keys.add((si, key))
                n_forget += 1
                if len(examples) < 10:
                    examples.append(caption)
            else:
                candidates.append((stable_hash(seed, key), si, key))
        per_shard[str(shard)] = {"scanned": len(caps), "forget": n_forget}
        scanned += len(caps)

    if not forget_keys:
        raise UnlearnflowError(
            f"target {target_id!r}: empty forget set: no caption among {scanned} scanned "
            f"in {len(shards)} shard(s) matches {matcher.pattern.pattern!r}"
        )
    if retain_size < 1:
        raise UnlearnflowError(f"target {target_id!r}: retain_size must be >= 1, got {retain_size}")
    candidates.sort()
    retain_keys = {(si, key) for _, si, key in candidates[:retain_size]}
    if len(retain_keys) < retain_size:
        log.warning(
            "target %s: only %d retain candidates, fewer than the %d asked for",
            target_id,
            len(retain_keys),
            retain_size,
        )

    # pass 2: copy the chosen samples, in shard order, byte for byte
    written = {"forget": 0, "retain": 0}
    with ShardWriter(forget_out) as fw, ShardWriter(retain_out) as rw:
        for si, shard in enumerate(shards):
            n_retain = 0
            for sample in iter_samples(shard):
                ident = (si, sample.key)
                if ident in forget_keys:
                    fw.write(sample)
                elif ident in retain_keys:
                    rw.write(sample)
                    n_retain += 1
            per_shard[str(shard)]["retain"] = n_retain
        written = {"forget": fw.count, "retain": rw.count}

    summary = {
        "target": target_id,
        "matching": matcher.describe(),
        "shards": [str(s) for s in shards],
        "scanned": scanned,
        "per_shard": per_shard,
        "forget": written["forget"],
        "retain": written["retain"],
        "retain_requested": retain_size,
        "retain_candidates": len(candidates),
        "retain_short": written["retain"] < retain_size,
        "seed": seed,
        "forget_examples": examples,
    }
    write_json(summary_out, summary)
    return summary


def select_heldout(shards, target: dict, out_path, target_id: str) -> int:
    """Target pairs from shards the model never saw: MIA's non-members."""
    matcher = Matcher.from_target(target)
    scanned = 0
    with ShardWriter(out_path) as w:
        for shard in shards:
            for sample in iter_samples(shard):
                scanned += 1
                if matcher(sample.caption):
                    w.write(sample)
        if w.count == 0:
            raise UnlearnflowError(
                f"target {target_id!r}: no held-out pair among {scanned} captions of {list(map(str, shards))}"
            )
        return w.count


def select_stage(inp: dict, out: dict, params: dict) -> None:
    s = select_sets(
        shards=inp["shards"],
        target=params["target"],
        retain_size=int(params["retain_size"]),
        seed=int(params["seed"]),
        forget_out=out["forget"],
        retain_out=out["retain"],
        summary_out=out["summary"],
        target_id=params["target_id"],
    )
    print(f"{s['target']}: forget {s['forget']}, retain {s['retain']} of {s['scanned']} scanned")
    if "heldout" in out:
        shards = inp["heldout_shards"] if isinstance(inp["heldout_shards"], list) else [inp["heldout_shards"]]
        n = select_heldout(shards, params["target"], out["heldout"], params["target_id"])
        print(f"{s['target']}: {n} held-out pairs")
