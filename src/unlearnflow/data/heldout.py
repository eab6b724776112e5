"""Which rows of the training shards are held out from everything.

With no held-out shard (one downloaded LAION part, say), MIA's non-members
come from a fraction of the training shards' own rows. A row is held out by
a stable hash of its key alone, not of the target, so pretraining can leave
out exactly the rows that selection holds out without depending on the
targets (adding a target must not retrain the model). Stdlib only.
"""

from __future__ import annotations

from ..io import stable_hash

_SCALE = float(2**64)


def is_heldout(key: str, fraction: float, seed: int) -> bool:
    """True for about ``fraction`` of all keys, the same ones in every process."""
    return fraction > 0 and stable_hash("heldout", seed, key) / _SCALE < fraction
