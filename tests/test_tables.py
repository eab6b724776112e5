"""The results tables say when a method's own search missed its criterion."""

from __future__ import annotations

import pandas as pd

from unlearnflow import provenance as P
from unlearnflow.tables import clip_table, search_caption, seed_summary, t2i_table

METRICS = {"fa1": 1.0, "fa5": 2.0, "identity_acc1": 3.0, "test_acc1": 4.0, "mia": 50.0}


def record(target, method, search=None, **extra):
    rec = {"target": target, "method": method, **METRICS, **extra}
    if search is not None:
        rec["search"] = search
    return P.stamp(rec, {"rule": "evaluate_clip", "target": target, "method": method, **extra})


def test_the_search_verdict_is_a_column_and_a_miss_is_named_in_the_caption():
    records = [
        record("a", "original"),
        record("a", "slug", "forgets within budget"),
        record("a", "ssd", "does not forget"),
        record("a", "ga"),
        record("b", "original"),
        record("b", "slug", "forgets over budget"),
        record("b", "ssd", "fixed lambda"),
        record("b", "ga"),
    ]
    df = clip_table(records, {})
    assert list(df.columns)[-2:] == ["search", "provenance"]
    got = df[df["target"] != "mean"].set_index(["target", "method"])["search"]
    assert got[("a", "slug")] == "forgets within budget" and got[("b", "ssd")] == "fixed lambda"
    assert got[[("a", "ga"), ("a", "original"), ("b", "ga")]].isna().all()
    assert df.loc[df["target"] == "mean", "search"].isna().all()  # no verdict of its own
    caption = search_caption(df)
    assert "a ssd: does not forget" in caption and "b slug: forgets over budget" in caption
    assert "a slug" not in caption and "fixed lambda" not in caption
    met = clip_table([r for r in records if r.get("search") in (None, "forgets within budget", "fixed lambda")], {})
    assert search_caption(met) == ""


def test_seeds_keep_each_distinct_verdict():
    df = pd.DataFrame(
        {
            "target": ["a"] * 4,
            "method": ["original", "slug", "slug", "slug"],
            "seed": [None, 0, 1, 2],
            "fa1": [90.0, 0.0, 5.0, 10.0],
            "search": [None, "forgets within budget", "forgets over budget", "forgets within budget"],
            "provenance": ["p0", "p1", "p2", "p3"],
        }
    )
    view = seed_summary(df)
    assert view["search"].tolist() == [None, "forgets within budget; forgets over budget"]
    assert view["fa1"].tolist()[1] == "5.00 ± 5.00"


def test_the_t2i_table_carries_slugs_verdict():
    base = {"target": "mira", "ua": 0.0, "ira": 97.7, "cra": 90.0}
    rows = t2i_table([{**base, "method": "original"}, {**base, "method": "slug", "ua": 87.5, "search": "forgets over budget"},
                      {**base, "method": "salun", "ua": 100.0}], {})  # fmt: skip
    assert rows.set_index("method")["search"].to_dict() == {"original": None, "salun": None, "slug": "forgets over budget"}
    assert "mira slug: forgets over budget" in search_caption(rows)
