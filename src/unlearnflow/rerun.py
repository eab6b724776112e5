"""Snakemake's params rerun trigger, keyed by name.

Snakemake 9 records a job's params as the *set* of their serialized values,
without their names (``Persistence._params``), and reruns a job when that set
changes. So a change that only moves a value between params is invisible:
``layers: {use_abs_alignment: false, matrices_only: false, include_layernorm:
true}`` -> flipping ``use_abs_alignment`` leaves the set {False, True}
unchanged, and the layer analysis is silently not rerun; likewise a seed set
to a value another param already has. ``key_params_trigger`` makes the
recorded params ``name=value`` strings, so every change of any named param
reruns the job. Outputs recorded before (bare values) compare as changed once,
so the first run after upgrading reruns those jobs. Stdlib only; called by the
Snakefile before any job is considered.
"""

from __future__ import annotations

_MARK = "_unlearnflow_keyed"


def keyed_params(persistence, job) -> list[str]:
    """``["name=<serialized value>", ...]``, sorted, of the job's params that
    are not derived from input or output files (what Snakemake records)."""
    non_derived = job.non_derived_params
    out = []
    for name, value in job.params.items():
        if not any(value is v for v in non_derived):
            continue  # derived from input/output (Snakemake leaves those out)
        text = persistence._serialize_param(value)
        if isinstance(text, str):  # UNREPRESENTABLE values are left out, as Snakemake does
            out.append(f"{name}={text}")
    return sorted(out)


def key_params_trigger() -> None:
    """Replace ``Persistence._params`` by :func:`keyed_params` (once)."""
    try:
        from snakemake.persistence import PersistenceBase as Persistence
    except ImportError as exc:  # pragma: no cover - snakemake is a dependency
        raise RuntimeError(f"unlearnflow: cannot patch Snakemake's params trigger ({exc})") from exc
    current = getattr(Persistence, "_params", None)
    if current is None or not callable(current) or not hasattr(Persistence, "_serialize_param"):
        raise RuntimeError(
            "unlearnflow: this Snakemake has no Persistence._params/_serialize_param, which "
            "unlearnflow.rerun keys by name; check the fix against this Snakemake version"
        )
    if getattr(current, _MARK, False):
        return

    def _params(self, job):
        return keyed_params(self, job)

    setattr(_params, _MARK, True)
    Persistence._params = _params
