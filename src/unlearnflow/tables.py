"""The papers' tables, regenerated from the cached evaluation records.

``clip_unlearning``: one row per (target, method) plus the original model,
then a mean row per method over targets, as the SLUG paper reports it. Costs
come from Snakemake's ``benchmark:`` files: a method's seconds and peak
memory are the sum / max over the jobs it needs (for SLUG: both gradient
passes, the layer analysis and the search).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import provenance
from .io import InputFileError, atomic_path, write_json

# every results table ends with `provenance`: the id of the record that made
# the row (results/provenance.json; a mean row: the ids it averages), after
# `search`: the method's own search verdict (its info.json `status`; blank for
# a method that searches nothing)
CLIP_COLUMNS = ["target", "method", "fa1", "fa5", "identity_acc1", "test_acc1", "mia", "seconds", "peak_mem_mb", "search", "provenance"]
MET = ("forgets within budget", "fixed lambda")  # verdicts that meet the method's own criterion


def search_caption(df: pd.DataFrame) -> str:
    """A caption sentence naming the rows whose method's own search did not
    meet its criterion (on its search split, not the table's): their numbers
    are the search's fallback, and a reader should know it. "" if none."""
    if "search" not in df.columns:
        return ""
    bad = df[df["search"].notna() & ~df["search"].isin(MET)]  # mean rows have no verdict: blank
    if bad.empty:
        return ""
    rows = "; ".join(f"{r.target} {r.method}: {r.search}" for r in bad.itertuples())
    return (
        f" Search verdicts that miss the method's own criterion ({rows}): the step (SLUG's size, SSD's lambda) of "
        "such a row did not meet the method's stop rule on what its search scored (the validation split; "
        "text-to-image: the search seeds); it is the search's fallback, and the run's info.json says why."
    )


def read_benchmark(path) -> dict:
    """Wall seconds and peak RSS (MB) of one Snakemake benchmark file."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "benchmark file not found")
    try:
        df = pd.read_csv(path, sep="\t")
        return {"seconds": float(df["s"].iloc[-1]), "peak_mem_mb": float(pd.to_numeric(df["max_rss"], errors="coerce").iloc[-1])}
    except (KeyError, IndexError, pd.errors.ParserError) as exc:
        raise InputFileError(path, f"not a Snakemake benchmark file ({exc})") from exc


def method_cost(paths: list) -> dict:
    costs = [read_benchmark(p) for p in paths]
    if not costs:
        return {"seconds": float("nan"), "peak_mem_mb": float("nan")}
    return {
        "seconds": sum(c["seconds"] for c in costs),
        "peak_mem_mb": max(c["peak_mem_mb"] for c in costs),
    }


def clip_table(records: list[dict], costs: dict) -> pd.DataFrame:
    """``costs``: {target: {run: [benchmark paths]}} (a run: a method at one
    unlearning seed, :mod:`unlearnflow.seeds`). With several seeds the rows
    are per seed (a ``seed`` column) and the mean rows per method and seed;
    :func:`seed_summary` turns that into mean ± std over seeds."""
    columns = list(CLIP_COLUMNS)
    if any("style_acc1" in r for r in records):  # a style target: the other styles' accuracy
        columns.insert(columns.index("test_acc1") + 1, "style_acc1")
    seeded = len({r.get("seed") for r in records if r["method"] != "original"}) > 1
    if seeded:
        columns.insert(2, "seed")
    rows = []
    for r in records:
        c = method_cost(costs.get(r["target"], {}).get(r.get("run", r["method"]), []))
        rows.append({k: r.get(k) for k in columns if k not in c} | c | {"provenance": r.get("provenance_id")})
    df = pd.DataFrame(rows, columns=columns)
    order = {m: i for i, m in enumerate(["original"] + sorted(set(df["method"]) - {"original"}))}
    keys = ["target", "method"] + (["seed"] if seeded else [])
    df = df.sort_values(keys, key=lambda s: s.map(order) if s.name == "method" else s)
    by = ["method"] + (["seed"] if seeded else [])
    mean = df.groupby(by, sort=False, dropna=False).mean(numeric_only=True).reset_index()
    mean.insert(0, "target", "mean")
    mean = mean.sort_values(by, key=lambda s: s.map(order) if s.name == "method" else s)
    aggregates = {}
    ids = []
    for _, m in mean.iterrows():
        same = df["method"] == m["method"]
        if seeded:
            same &= (df["seed"] == m["seed"]) | (df["seed"].isna() & pd.isna(m["seed"]))
        members = [i for i in df.loc[same, "provenance"] if isinstance(i, str)]
        pid, rec = provenance.aggregate(members, "mean over targets") if members else (None, None)
        if pid is not None:
            aggregates[pid] = rec
        ids.append(pid)
    mean["provenance"] = ids
    # a mean row has no verdict of its own (non-numeric columns are blank there)
    out = pd.concat([df, mean.reindex(columns=columns)], ignore_index=True)
    out.attrs["provenance"] = aggregates
    return out


def seed_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per (target, method): every metric as "mean ± std" over the seed rows
    (sample std, ddof 1) and their number ``n``; a single row (the original
    model) stays a plain number. The provenance of a summary row aggregates
    its seed rows'."""
    metrics = [c for c in df.columns if c not in ("target", "method", "seed", "provenance")]
    rows, aggregates = [], {}
    for (target, method), g in df.groupby(["target", "method"], sort=False):
        n = len(g)
        row = {"target": target, "method": method, "n": n}
        for m in metrics:
            if not pd.api.types.is_numeric_dtype(df[m]):  # text (a search verdict per seed): the distinct values
                row[m] = "; ".join(dict.fromkeys(v for v in g[m] if isinstance(v, str))) or None
                continue
            values = pd.to_numeric(g[m], errors="coerce")
            mean = values.mean()
            row[m] = f"{mean:.2f}" if n == 1 or pd.isna(mean) else f"{mean:.2f} ± {values.std(ddof=1):.2f}"
        members = [i for i in g["provenance"] if isinstance(i, str)]
        pid, rec = provenance.aggregate(members, "mean ± std over seeds") if n > 1 else (members[0] if members else None, None)
        if rec is not None:
            aggregates[pid] = rec
        row["provenance"] = pid
        rows.append(row)
    out = pd.DataFrame(rows, columns=["target", "method", "n", *metrics, "provenance"])
    out.attrs["provenance"] = aggregates
    return out


def write_provenance(path, records: list[dict], df: pd.DataFrame, view: pd.DataFrame | None = None) -> None:
    """{id: record} of every row of a table (``{table}.provenance.json``,
    merged into results/provenance.json), and of its summary ``view``; a
    row without a record is an error, since its numbers could come from
    anywhere."""
    known = provenance.table_provenance(records) | df.attrs.get("provenance", {})
    if view is not None:
        known |= view.attrs.get("provenance", {})
        df = pd.concat([df[["provenance"]], view[["provenance"]]], ignore_index=True)
    lacking = [i for i, pid in enumerate(df["provenance"]) if not isinstance(pid, str) or pid not in known]
    if lacking:
        row = df.iloc[lacking[0]]
        raise InputFileError(
            path,
            f"{len(lacking)} row(s) have no provenance record, e.g. {dict(row.drop('provenance'))}: their "
            "metrics records predate provenance; rerun their evaluation (snakemake --forcerun evaluate_clip "
            "evaluate_t2i evaluate_i2i)",
        )
    write_json(path, {pid: known[pid] for pid in dict.fromkeys(df["provenance"])})


T2I_COLUMNS = ["target", "method", "ua", "ira", "cra", "fid", "kid", "is", "clip_score", "seconds", "peak_mem_mb", "storage_mb", "feature_net", "search", "provenance"]


def t2i_table(records: list[dict], costs: dict) -> pd.DataFrame:
    """UnlearnCanvas-style rows: UA / IRA / CRA, FID / KID / IS / CLIP score
    (retain prompts), cost (seconds, peak memory from the benchmark files,
    storage = size of what the method stores)."""
    rows = []
    for r in records:
        c = method_cost(costs.get(r["target"], {}).get(r["method"], []))
        row = {k: r.get(k) for k in T2I_COLUMNS if k not in c} | c
        row["storage_mb"] = r.get("storage_mb", float("nan"))
        row["provenance"] = r.get("provenance_id")
        rows.append(row)
    df = pd.DataFrame(rows, columns=T2I_COLUMNS)
    order = {m: i for i, m in enumerate(["original"] + sorted(set(df["method"]) - {"original"}))}
    return df.sort_values(["target", "method"], key=lambda s: s.map(order) if s.name == "method" else s).reset_index(drop=True)


def write_tables(df: pd.DataFrame, csv, md, tex, caption: str, caption_in_md: bool = False, view: pd.DataFrame | None = None) -> None:
    """The CSV from ``df``; the Markdown and LaTeX from ``view`` when given
    (mean ± std over seeds), else from ``df``."""
    with atomic_path(csv, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.2f")
    df = df if view is None else view
    with atomic_path(md, suffix=".md") as tmp:
        tmp.write_text((f"{caption}\n\n" if caption_in_md else "") + df.to_markdown(index=False, floatfmt=".2f") + "\n")
    with atomic_path(tex, suffix=".tex") as tmp:
        tmp.write_text(
            df.to_latex(index=False, float_format="%.2f", caption=caption, label="tab:" + Path(csv).stem, na_rep="--")
        )


# ------------------------------------------------------------------ costs
COST_COLUMNS = ["rule", "wildcards", "seconds", "peak_mem_mb"]


def benchmark_job(path) -> tuple[str, str]:
    """(rule, wildcards) of ``results/benchmarks/{rule}/{...}.tsv``: the rule
    is the folder under ``benchmarks``, the wildcards the rest of the path
    (``tiny_clip/mira_castell/slug``)."""
    parts = Path(path).with_suffix("").parts
    if "benchmarks" in parts[:-1]:
        i = len(parts) - 1 - parts[::-1].index("benchmarks")
        rest = parts[i + 1 :]
        if len(rest) >= 2:
            return rest[0], "/".join(rest[1:])
    return Path(path).parent.name, Path(path).stem


def costs_table(benchmark_files) -> pd.DataFrame:
    """One row per benchmark file (rule, wildcards, wall seconds, peak RSS in
    MB), in the given order, then a ``total`` row: the sum of the seconds and
    the largest peak (jobs may overlap, so peaks do not add up)."""
    rows = []
    for path in benchmark_files:
        rule, wildcards = benchmark_job(path)
        rows.append({"rule": rule, "wildcards": wildcards, **read_benchmark(path)})
    df = pd.DataFrame(rows, columns=COST_COLUMNS)
    total = {
        "rule": "total",
        "wildcards": f"{len(df)} jobs",
        "seconds": float(df["seconds"].sum()),
        "peak_mem_mb": float(df["peak_mem_mb"].max()) if len(df) else float("nan"),
    }
    return pd.concat([df, pd.DataFrame([total], columns=COST_COLUMNS)], ignore_index=True)


# ------------------------------------------------------------ HTML views
_HTML_CSS = """
body { font-family: system-ui, sans-serif; font-size: 14px; margin: 1em; color: #222; }
h1 { font-size: 16px; }
table { border-collapse: collapse; }
th, td { padding: 4px 10px; border-bottom: 1px solid #ddd; }
th { background: #f3f4f6; text-align: left; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.summary td { font-weight: bold; border-top: 2px solid #888; }
tr:hover td { background: #fafafa; }
"""


def table_html(df: pd.DataFrame, title: str, summary_values=("mean", "total")) -> str:
    """A standalone HTML page of a table (numbers right-aligned, 2 decimals,
    missing values blank, rows whose first cell is ``mean``/``total`` bold),
    for the Snakemake report, which shows HTML inline but offers CSV files
    only as downloads."""
    import html
    import numbers

    def cell(v):
        if isinstance(v, numbers.Integral) and not isinstance(v, bool):
            return f'<td class="num">{v}</td>'
        if isinstance(v, numbers.Real):
            return '<td class="num">' + ("" if pd.isna(v) else f"{v:.2f}") + "</td>"
        return f"<td>{html.escape('' if v is None or v is pd.NA else str(v))}</td>"

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for vals in df.itertuples(index=False):
        cls = ' class="summary"' if vals and str(vals[0]) in summary_values else ""
        rows.append(f"<tr{cls}>" + "".join(cell(v) for v in vals) + "</tr>")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_HTML_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></body></html>\n"
    )
