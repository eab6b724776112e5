"""Forget and retain sets for a target, selected by caption.

Forget: every sample whose caption names the target (its name or an alias,
case-insensitive by default, on word boundaries, with spaces and
underscores interchangeable; an optional extra regular expression), scanned
across all configured shards.

Retain: samples whose caption names neither the target nor an alias,
disjoint from the forget set, of a configured size; or (``select_retain``,
opt-in: ``selection.shared_retain``) one retain set for every target,
naming none of them. The choice is a stable
hash of (seed, key), so it is deterministic for a seed, independent of
shard order, and grows monotonically with the size.

Retain takes only non-empty captions and is disjoint from the forget set by
image content as well as by key (a URL listed twice, once with a caption
naming the target and once with none, is one picture). Held-out (MIA's
non-members): the target's pairs of held-out shards, or of a held-out share
of the training rows (``heldout.is_heldout``), none of whose pictures is in
the training shards.

All are written as webdataset tars keeping the original keys, captions and
files byte for byte; a JSON summary records counts, what was dropped and
why, and the matching rule. Rerunning gives byte-identical tars.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..io import InputFileError, UnlearnflowError, stable_hash, write_json
from .heldout import is_heldout
from .shards import IMAGE_EXTS, ShardWriter, iter_samples

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


def _digest(sample) -> str | None:
    """The sha256 of a sample's image bytes (None without an image): the same
    picture under two keys (a URL listed twice) has one digest."""
    try:
        return hashlib.sha256(sample.image_bytes).hexdigest()
    except KeyError:
        return None


def choose_retain(candidates: list, forget_digests: set, retain_size: int, dropped: dict, who: str) -> set:
    """The retain set among ``candidates`` ((hash, shard index, key, digest)
    of captions naming no target): the lowest hashes, one copy of each
    picture, none of a forget set's pictures. Counts each drop in ``dropped``."""
    candidates = sorted(candidates)
    keys: set[tuple[int, str]] = set()
    digests: set[str] = set()
    dropped["retain_same_image_as_forget"] = dropped["retain_duplicate_image"] = 0
    for _, si, key, digest in candidates:
        if len(keys) == retain_size:
            break
        if digest in forget_digests:
            dropped["retain_same_image_as_forget"] += 1
        elif digest in digests:
            dropped["retain_duplicate_image"] += 1
        else:
            keys.add((si, key))
            digests.add(digest)
    if len(keys) < retain_size:
        log.warning("%s: only %d retain candidates, fewer than the %d asked for", who, len(keys), retain_size)
    return keys


def select_sets(
    shards: list[str | Path],
    target: dict,
    retain_size: int,
    seed: int,
    forget_out,
    retain_out,
    summary_out,
    target_id: str | None = None,
    heldout_out=None,
    heldout_shards: list[str | Path] = (),
    heldout_fraction: float = 0.0,
) -> dict:
    """Scan ``shards``, write the forget, retain and held-out tars and the
    summary. Every set is decided before anything is written, so a target
    without forget or held-out pairs fails with nothing half-made.

    Held-out pairs (MIA's non-members) are the target's pairs of
    ``heldout_shards``, or, with ``heldout_fraction`` > 0, of the rows of
    ``shards`` that ``is_heldout`` holds out (which then join neither set).
    Retain takes only non-empty captions and no picture that is in the
    forget set or already in retain (by image content); held-out takes no
    picture that is in the training shards. The summary counts each drop."""
    matcher = Matcher.from_target(target)
    target_id = target_id or target["name"]
    shards = [Path(s) for s in shards]
    heldout_shards = [Path(s) for s in heldout_shards]
    if not shards:
        raise UnlearnflowError(f"target {target_id!r}: no shards to scan")
    if heldout_out is not None and bool(heldout_shards) == (heldout_fraction > 0):
        raise UnlearnflowError(
            f"target {target_id!r}: MIA's non-members need one source: held-out shards "
            f"(config data.heldout_shards, got {list(map(str, heldout_shards))}) or a held-out share "
            f"of the training rows (data.heldout_fraction, got {heldout_fraction}), not both or neither"
        )
    exts = ("txt", *IMAGE_EXTS)

    # pass 1: captions and image digests, to decide every set before writing
    forget_keys: set[tuple[int, str]] = set()
    forget_digests: set[str] = set()
    train_digests: set[str] = set()  # pictures a model trained on these shards saw
    candidates: list[tuple[int, int, str, str | None]] = []
    held: list[tuple[int, str, str | None]] = []
    dropped = {"retain_empty_caption": 0, "no_image": 0, "heldout_rows_not_target": 0}
    per_shard = {}
    scanned = 0
    examples = []
    for si, shard in enumerate(shards):
        n_forget = n_held = n = 0
        for sample in iter_samples(shard, exts=exts):
            n += 1
            digest = _digest(sample)
            if digest is None:
                dropped["no_image"] += 1
                continue
            caption = sample.caption
            hit = matcher(caption)
            if heldout_fraction > 0 and is_heldout(sample.key, heldout_fraction, seed):
                if hit:
                    held.append((si, sample.key, digest))
                    n_held += 1
                else:
                    dropped["heldout_rows_not_target"] += 1
                continue
            train_digests.add(digest)
            if hit:
                forget_keys.add((si, sample.key))
                forget_digests.add(digest)
                n_forget += 1
                if len(examples) < 10:
                    examples.append(caption)
            elif not caption.strip():
                dropped["retain_empty_caption"] += 1
            else:
                candidates.append((stable_hash(seed, sample.key), si, sample.key, digest))
        if n == 0:
            raise InputFileError(
                shard, f"target {target_id!r}: an empty shard (no samples); drop it from data.shards or remake it"
            )
        per_shard[str(shard)] = {"scanned": n, "forget": n_forget}
        if heldout_fraction > 0:
            per_shard[str(shard)]["heldout"] = n_held
        scanned += n

    if not forget_keys:
        raise UnlearnflowError(
            f"target {target_id!r}: empty forget set: no caption among {scanned} scanned "
            f"in {len(shards)} shard(s) matches {matcher.pattern.pattern!r}"
        )
    if retain_out and retain_size < 1:
        raise UnlearnflowError(f"target {target_id!r}: retain_size must be >= 1, got {retain_size}")

    retain_keys = choose_retain(candidates, forget_digests, retain_size, dropped, target_id) if retain_out else set()

    heldout_keys: set[tuple[int, str]] = set()
    heldout_source = None
    if heldout_out is not None:
        dropped["heldout_seen_in_training"] = 0
        held_scanned = 0
        if heldout_shards:
            heldout_source = {"shards": [str(s) for s in heldout_shards]}
            for hi, shard in enumerate(heldout_shards):
                for sample in iter_samples(shard, exts=exts):
                    held_scanned += 1
                    digest = _digest(sample)
                    if digest is not None and matcher(sample.caption):
                        held.append((hi, sample.key, digest))
            where = f"{held_scanned} captions of the held-out shards {list(map(str, heldout_shards))} (config data.heldout_shards)"
        else:
            heldout_source = {"fraction": heldout_fraction, "seed": seed, "rule": "stable_hash('heldout', seed, key) / 2**64 < fraction"}
            where = f"the {heldout_fraction:g} share of rows that data.heldout_fraction holds out of {scanned}"
        for si, key, digest in held:
            if digest in train_digests:
                dropped["heldout_seen_in_training"] += 1
            else:
                heldout_keys.add((si, key))
        if not heldout_keys:
            raise UnlearnflowError(
                f"target {target_id!r}: no held-out pair (a caption naming the target, with a picture "
                f"no training shard has) among {where}; MIA needs non-members: configure held-out shards "
                f"that name the target (data.heldout_shards), or set data.heldout_shards: [] and "
                f"data.heldout_fraction (e.g. 0.1) to hold out a share of the training rows"
            )

    # pass 2: copy the chosen samples, in shard order, byte for byte
    with contextlib.ExitStack() as stack:
        fw = stack.enter_context(ShardWriter(forget_out))
        rw = stack.enter_context(ShardWriter(retain_out)) if retain_out else None
        hw = stack.enter_context(ShardWriter(heldout_out)) if heldout_out is not None else None
        for si, shard in enumerate(shards):
            n_retain = 0
            for sample in iter_samples(shard):
                ident = (si, sample.key)
                if ident in forget_keys:
                    fw.write(sample)
                elif ident in retain_keys:
                    rw.write(sample)
                    n_retain += 1
                elif heldout_fraction > 0 and ident in heldout_keys:
                    hw.write(sample)
            if rw:
                per_shard[str(shard)]["retain"] = n_retain
        if heldout_shards and hw is not None:
            for hi, shard in enumerate(heldout_shards):
                for sample in iter_samples(shard):
                    if (hi, sample.key) in heldout_keys:
                        hw.write(sample)
        written = {"forget": fw.count, "retain": rw.count if rw else None, "heldout": hw.count if hw is not None else None}

    summary = {
        "target": target_id,
        "matching": matcher.describe(),
        "shards": [str(s) for s in shards],
        "scanned": scanned,
        "per_shard": per_shard,
        "forget": written["forget"],
        "dropped": dropped,
        "seed": seed,
        "forget_examples": examples,
    }
    if retain_out:
        summary.update(retain=written["retain"], retain_requested=retain_size, retain_candidates=len(candidates),
                       retain_short=written["retain"] < retain_size)
    else:  # the shared retain set (select_retain) serves every target
        summary["retain"] = "shared"
    if heldout_out is not None:
        summary["heldout"] = written["heldout"]
        summary["heldout_source"] = heldout_source
    write_json(summary_out, summary)
    return summary


def select_retain(shards, targets: dict[str, dict], retain_size: int, seed: int, retain_out, summary_out,
                  heldout_fraction: float = 0.0) -> dict:
    """One retain set for every target: the captions naming none of
    ``targets`` (id -> target), none of whose pictures is any target's, by the
    same hash order as a target's own retain set, so that with one target the
    two are the same samples. Its gradient is then one pass per model, shared
    by every target (the SLUG paper's setting: one shard for all identities).
    Rows that ``heldout_fraction`` holds out join no retain set, as in
    :func:`select_sets`."""
    if not targets:
        raise UnlearnflowError("the shared retain set: no target to exclude")
    matchers = {tid: Matcher.from_target(t) for tid, t in targets.items()}
    shards = [Path(s) for s in shards]
    if not shards:
        raise UnlearnflowError("the shared retain set: no shards to scan")
    if retain_size < 1:
        raise UnlearnflowError(f"the shared retain set: retain_size must be >= 1, got {retain_size}")
    excluded = dict.fromkeys(matchers, 0)
    forget_digests: set[str] = set()
    candidates = []
    dropped = {"retain_empty_caption": 0, "no_image": 0, "heldout_rows": 0}
    scanned = 0
    for si, shard in enumerate(shards):
        n = 0
        for sample in iter_samples(shard, exts=("txt", *IMAGE_EXTS)):
            n += 1
            digest = _digest(sample)
            if digest is None:
                dropped["no_image"] += 1
                continue
            if heldout_fraction > 0 and is_heldout(sample.key, heldout_fraction, seed):
                dropped["heldout_rows"] += 1
                continue
            hits = [tid for tid, m in matchers.items() if m(sample.caption)]
            for tid in hits:
                excluded[tid] += 1
            if hits:
                forget_digests.add(digest)
            elif not sample.caption.strip():
                dropped["retain_empty_caption"] += 1
            else:
                candidates.append((stable_hash(seed, sample.key), si, sample.key, digest))
        if n == 0:
            raise InputFileError(shard, "the shared retain set: an empty shard (no samples); drop it from data.shards")
        scanned += n
    keys = choose_retain(candidates, forget_digests, retain_size, dropped, "the shared retain set")
    with ShardWriter(retain_out) as rw:
        for si, shard in enumerate(shards):
            for sample in iter_samples(shard):
                if (si, sample.key) in keys:
                    rw.write(sample)
        count = rw.count
    summary = {
        "retain": count,
        "retain_requested": retain_size,
        "retain_candidates": len(candidates),
        "retain_short": count < retain_size,
        "excluded_targets": {tid: {"captions": excluded[tid], "matching": matchers[tid].describe()} for tid in matchers},
        "shards": [str(s) for s in shards],
        "scanned": scanned,
        "dropped": dropped,
        "seed": seed,
    }
    write_json(summary_out, summary)
    return summary


def _metadata_captions(path, caption_col: str) -> list[str]:
    import pyarrow.parquet as pq

    try:
        column = pq.read_table(path, columns=[caption_col]).column(0).to_pylist()
    except (OSError, KeyError, ValueError) as exc:
        raise InputFileError(path, f"cannot read caption column {caption_col!r} ({exc})") from exc
    return ["" if c is None else str(c) for c in column]


def scan_metadata(shards, heldout_shards, targets: dict[str, dict], caption_col: str = "TEXT") -> dict:
    """Count each target's matching captions in the shards' metadata (before
    any image is downloaded); raise for a target none of the training shards
    names, or none of the held-out shards, so that a misspelt name costs a
    parquet scan, not a download. (Some matches may still fail to download.)"""
    shards, heldout_shards = [Path(s) for s in shards], [Path(s) for s in heldout_shards]
    captions = {s: _metadata_captions(s, caption_col) for s in shards + heldout_shards}
    report = {"caption_col": caption_col, "targets": {}}
    for tid, target in targets.items():
        matcher = Matcher.from_target(target)
        counts = {str(s): sum(map(matcher, captions[s])) for s in shards}
        held = {str(s): sum(map(matcher, captions[s])) for s in heldout_shards}
        report["targets"][tid] = {"shards": counts, "heldout_shards": held}
        for where, found, key in ((shards, counts, "data.shards"), (heldout_shards, held, "data.heldout_shards")):
            if where and not sum(found.values()):
                n = sum(len(captions[s]) for s in where)
                raise UnlearnflowError(
                    f"target {tid!r}: none of the {n} captions (column {caption_col!r}) of "
                    f"{[str(s) for s in where]} ({key}) matches {matcher.pattern.pattern!r}; checked "
                    f"before downloading any image: fix the target's name, aliases or regex, or the shards"
                )
    return report
