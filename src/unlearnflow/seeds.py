"""Unlearning seeds as runs of a method (torch-free: the Snakefile reads it).

``seeds.unlearn`` is one seed or a list. A method's run at the first seed
keeps the method's own name (``ga``: the default's paths and results stay as
they are when seeds are added); each further seed is a run named
``{method}.s{seed}`` (``ga.s1``) beside it. Records say their method and seed;
tables group runs by method, per-seed rows in the CSV, mean ± std over seeds
in the Markdown and LaTeX views.
"""

from __future__ import annotations

SEP = ".s"


def seed_list(value) -> list[int]:
    """``seeds.unlearn`` as a list (one seed or several, no repeats)."""
    seeds = [int(value)] if isinstance(value, int) else [int(v) for v in value]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"config seeds.unlearn: one seed or a list of distinct seeds, got {value!r}")
    return seeds


def runs(method: str, seeds: list[int]) -> list[str]:
    return [method] + [f"{method}{SEP}{s}" for s in seeds[1:]]


def method_of(run: str) -> str:
    return run.split(SEP, 1)[0] if SEP in run else run


def seed_of(run: str, seeds: list[int]) -> int:
    return int(run.split(SEP, 1)[1]) if SEP in run else seeds[0]


RUN_PATTERN = r"[a-z0-9_]+(\.s[0-9]+)?"  # a run wildcard: a method, maybe a seed
