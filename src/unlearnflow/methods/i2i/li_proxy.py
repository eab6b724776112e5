"""Li et al. with a proxy retain set (the paper's proxy D_R variant).

The same objective as :mod:`.li`; the rule hands it the proxy pool
(``results/data/i2i/proxy.tar``: pictures of another pool, none of a forget
class) in place of the real retain set, as when the retain data is not
available. Its params default to ``li``'s, with ``retain_set: proxy``.
"""

from __future__ import annotations

from ... import method_table
from . import li

DEFAULTS = method_table.defaults("i2i", "li_proxy")  # the one source: unlearnflow.method_table


def run(ctx, params: dict):
    """The method interface (see unlearnflow.methods)."""
    return li.run(ctx, params, method="li_proxy", defaults=DEFAULTS)
