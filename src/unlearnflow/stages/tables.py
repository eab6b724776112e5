"""One function per rule of workflow/rules/tables.smk: I/O here, algorithms in
:mod:`unlearnflow.tables`, :mod:`unlearnflow.plots` and
:mod:`unlearnflow.provenance`."""

from __future__ import annotations

from pathlib import Path

from ..io import InputFileError, atomic_path, read_json, write_json


def clip_table(inp: dict, out: dict, params: dict) -> None:
    """Rule ``clip_table``: one row per (target, method), mean rows, costs."""
    from .. import tables

    records = []
    for path in inp["evals"]:
        r = read_json(path)
        if r["method"] == "base":
            r["method"] = "original"
        records.append(r)
    df = tables.clip_table(records, params["costs"])
    view = tables.seed_summary(df) if "seed" in df.columns else None
    missed = tables.search_caption(df)
    caption = params.get("caption", "CLIP unlearning") + missed
    if view is not None:
        seeds = sorted({int(s) for s in df["seed"].dropna()})
        caption += f" Mean ± std (sample) over the unlearning seeds {seeds}; n = runs per row; the CSV has one row per seed."
    tables.write_tables(df, out["csv"], out["md"], out["tex"], caption, caption_in_md=view is not None or bool(missed), view=view)
    tables.write_provenance(out["provenance"], records, df, view)
    print((df if view is None else view).to_markdown(index=False, floatfmt=".2f"))


def clip_tradeoff(inp: dict, out: dict, params: dict) -> None:
    """Rule ``clip_tradeoff``: forget accuracy against object accuracy, per method."""
    import pandas as pd

    from ..plots import tradeoff_plot

    table = pd.read_csv(inp["table"])
    tradeoff_plot(table, out["png"], params.get("title", "CLIP unlearning: forget vs keep"))
    print(f"wrote {out['png']}")


def costs_table(inp: dict, out: dict, params: dict) -> None:
    """Rule ``costs_table``: wall time and peak memory of every heavy job."""
    from .. import tables

    files = inp["benchmarks"] if isinstance(inp["benchmarks"], list) else [inp["benchmarks"]]
    df = tables.costs_table(files)
    with atomic_path(out["csv"], suffix=".csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.2f")
    with atomic_path(out["md"], suffix=".md") as tmp:
        tmp.write_text(df.to_markdown(index=False, floatfmt=".2f") + "\n")
    print(df.to_markdown(index=False, floatfmt=".2f"))


def _read_table(path):
    """A CSV table of :mod:`unlearnflow.tables`; a missing or unreadable file
    is an error naming it."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "table not found")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"not a readable CSV table ({exc})") from exc


def table_html(inp: dict, out: dict, params: dict) -> None:
    """Rule ``table_html``: a CSV table as an HTML page for the report."""
    from .. import tables

    df = _read_table(inp["csv"])
    with atomic_path(out["html"], suffix=".html") as tmp:
        tmp.write_text(tables.table_html(df, params.get("title", Path(inp["csv"]).stem)))
    print(f"wrote {out['html']}: {len(df)} rows")


def provenance_index(inp: dict, out: dict, params: dict) -> None:
    """Rule ``provenance_index``: merge the tables' provenance files into one
    id -> record map, checking each id against its record's content."""
    from ..provenance import record_id

    merged: dict = {}
    files = inp["tables"] if isinstance(inp["tables"], list) else [inp["tables"]]
    for path in files:
        for pid, record in read_json(path).items():
            if record_id(record) != pid:
                raise InputFileError(path, f"provenance id {pid} does not match its record (edited by hand?)")
            merged[pid] = record
    write_json(out["json"], merged)
    print(f"{len(merged)} provenance records from {len(files)} tables")
