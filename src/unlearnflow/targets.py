"""The targets of a run, read once from the config's two lists.

``targets`` are unlearned from the CLIP, ``t2i.targets`` from the diffusion
model; one forget set is built per id for both. So an id must mean one
concept: the same id in both lists is fine when both entries agree, and an
error naming both entries when they do not (otherwise one would silently
replace the other and the forget set of another concept would be built).
Stdlib only: the Snakefile imports this to build the DAG.
"""

from __future__ import annotations

from .io import UnlearnflowError

# each list: its place in the config (for error messages), its path, its branch
LISTS = (("targets", ("targets",), "clip"), ("t2i.targets", ("t2i", "targets"), "t2i"))


# a target kind -> the name of its evaluation domain (eval set, judge head)
DOMAINS = {"identity": "identities", "object": "objects", "style": "styles"}


def _get(config: dict, path: tuple[str, ...]) -> list:
    value = config
    for key in path:
        value = (value or {}).get(key) or {}
    return list(value or [])


def branch_targets(config: dict, branch: str) -> list[str]:
    """The target ids of a branch; none when the branch is off."""
    for _, path, owner in LISTS:
        if owner == branch:
            return [t["id"] for t in _get(config, path)] if branch in branches(config) else []
    raise KeyError(branch)


def branches(config: dict) -> list[str]:
    return list(config.get("branches") or ["clip", "t2i", "i2i"])


def merge_targets(config: dict) -> dict[str, dict]:
    """id -> target over the lists of the branches that run, in order;
    raises on an id listed twice in one list, or listed in both with
    different definitions, and on a branch that runs without targets."""
    merged: dict[str, dict] = {}
    where: dict[str, str] = {}
    for name, path, branch in LISTS:
        if branch not in branches(config):
            continue
        if branch == "clip" and not _get(config, path):
            raise UnlearnflowError(
                "config targets: empty, but branches has clip; name what to forget from the CLIP, "
                "or leave clip out of branches"
            )
        seen: dict[str, int] = {}
        for i, target in enumerate(_get(config, path)):
            tid = target["id"]
            here = f"{name}[{i}]"
            if tid in seen:
                raise UnlearnflowError(f"config {here}: duplicate target id {tid!r} (also {name}[{seen[tid]}])")
            seen[tid] = i
            if tid in merged and merged[tid] != target:
                keys = sorted(k for k in set(merged[tid]) | set(target) if merged[tid].get(k) != target.get(k))
                diff = "; ".join(f"{k}: {merged[tid].get(k)!r} vs {target.get(k)!r}" for k in keys)
                raise UnlearnflowError(
                    f"config: target id {tid!r} is defined twice, differently, in {where[tid]} and {here} "
                    f"({diff}); one id is one forget set, so give one of them another id, "
                    f"or make both entries identical"
                )
            merged.setdefault(tid, target)
            where.setdefault(tid, here)
    return merged


def check_split(objects, forget_classes, retain_classes) -> None:
    """The image-to-image branch's classes: each list non-empty, of known
    objects, the two disjoint (at DAG build and in the i2i_images stage)."""
    from .io import UnlearnflowError

    known = list(objects)
    for key, classes in (("forget_classes", forget_classes), ("retain_classes", retain_classes)):
        if not classes:
            raise UnlearnflowError(f"i2i.{key}: empty; name some of the objects {known}")
        unknown = [c for c in classes if c not in known]
        if unknown:
            raise UnlearnflowError(f"i2i.{key}: {unknown} not among the objects {known}")
    both = sorted(set(forget_classes) & set(retain_classes))
    if both:
        raise UnlearnflowError(f"i2i: classes {both} are in both forget_classes and retain_classes")
