"""One function per rule of workflow/rules/data.smk: I/O here, algorithms in
:mod:`unlearnflow.data` (synthetic, laion, ingest, select)."""

from __future__ import annotations

from ..io import UnlearnflowError


def synthetic_shard(inp: dict, out: dict, params: dict) -> None:
    """Rule ``synthetic_shard``: one shard of the synthetic benchmark."""
    from ..data.synthetic import SyntheticSpec, write_shard

    spec = SyntheticSpec.from_params(params["synthetic"])
    stats = write_shard(spec, params["shard"], out["parquet"], out["tar"], out["stats"])
    print(f"shard {params['shard']}: {stats['successes']}/{stats['count']} samples written to {out['tar']}")


def laion_metadata(inp: dict, out: dict, params: dict) -> None:
    """Rule ``laion_metadata``: one LAION metadata parquet over HTTP (resumed, checked)."""
    from ..data.laion import check_parquet, download_file

    info = download_file(
        params["url"],
        out["parquet"],
        sha256=params.get("sha256") or None,
        size=params.get("size") or None,
        retries=int(params["retries"]),
        backoff=float(params["backoff"]),
        timeout=float(params["timeout"]),
        check=check_parquet,
    )
    rows = check_parquet(out["parquet"])
    print(
        f"{info['url']}: {info['bytes']} bytes, {rows} rows, sha256 {info['sha256']} "
        f"({info['attempts']} attempts) -> {out['parquet']}"
    )


def laion_shard_metadata(inp: dict, out: dict, params: dict) -> None:
    """Rule ``laion_shard_metadata``: the rows of one shard of the metadata parquet."""
    from ..data.laion import shard_metadata

    rows = shard_metadata(
        inp["metadata"],
        str(params["shard"]),
        int(params["samples_per_shard"]),
        out["parquet"],
        url_col=params.get("url_col", "URL"),
        caption_col=params.get("caption_col", "TEXT"),
    )
    print(f"shard {params['shard']}: {rows} rows -> {out['parquet']}")


def laion_images(inp: dict, out: dict, params: dict) -> None:
    """Rule ``laion_images``: a shard's images through img2dataset, re-keyed."""
    from ..data.laion import ADDITIONAL_COLUMNS, fetch_images

    spp = params.get("samples_per_shard")
    stats = fetch_images(
        inp["parquet"],
        str(params["shard"]),
        out["tar"],
        out["stats"],
        image_size=int(params.get("image_size", 256)),
        url_col=params.get("url_col", "URL"),
        caption_col=params.get("caption_col", "TEXT"),
        additional_columns=tuple(params.get("additional_columns", ADDITIONAL_COLUMNS)),
        processes=int(params.get("processes", 1)),
        threads=int(params.get("threads", 16)),
        timeout=int(params.get("timeout", 10)),
        retries=int(params.get("retries", 0)),
        resize_mode=params.get("resize_mode", "border"),
        encode_quality=int(params.get("encode_quality", 95)),
        samples_per_shard=int(spp) if spp else None,
    )
    print(
        f"shard {params['shard']}: {stats['successes']}/{stats['count']} images -> {out['tar']} "
        f"({stats['failed_to_download']} failed to download, {stats['failed_to_resize']} to resize)"
    )


def synthetic_eval_set(inp: dict, out: dict, params: dict) -> None:
    """Rule ``synthetic_eval_set``: val/test tars + classes.json of one synthetic set."""
    from ..data.synthetic import SyntheticSpec, write_eval_set

    spec = SyntheticSpec.from_params(params["synthetic"])
    info = write_eval_set(spec, params["evalset"], params["per_class"], out)
    print(f"{params['evalset']}: {info['counts']} images of {len(info['classes'])} classes")


def _opt_int(value):
    return None if value in (None, "", "null") else int(value)


def ingest_eval_set(inp: dict, out: dict, params: dict) -> None:
    """Rule ``ingest_eval_set``: a real benchmark folder -> val/test tars + classes.json."""
    from ..data.ingest import ingest

    # the rule passes the set's whole config block as params["folders"] (and
    # the tree's listing and names-file stamps, rerun triggers recorded here)
    params = {**params.get("folders", {}), **{k: v for k, v in params.items() if k != "folders"}}
    for k in ("layout", "root", "image_size", "seed"):
        if params.get(k) in (None, ""):
            raise UnlearnflowError(f"ingest_eval_set: params.{k} is required")
    info = ingest(
        params["layout"],
        params["root"],
        out,
        image_size=int(params["image_size"]),
        seed=int(params["seed"]),
        val_fraction=0.3 if params.get("val_fraction") in (None, "") else float(params["val_fraction"]),
        max_per_class=_opt_int(params.get("max_per_class")),
        top_k=_opt_int(params.get("top_k")),
        min_images=_opt_int(params.get("min_images")) or 1,
        names_file=params.get("names_file") or None,
        evalset=params.get("evalset"),
        max_unreadable=float(params.get("max_unreadable") or 0.0),
        listing=params.get("listing"),
    )
    print(
        f"{info['source']['layout']} {params['root']}: {info['counts']} images "
        f"of {len(info['classes'])} {info['kind']} classes"
    )


def select_sets(inp: dict, out: dict, params: dict) -> None:
    """Rule ``select_sets``: a target's forget, retain and held-out sets, by caption."""
    from ..data import select

    held = inp.get("heldout_shards") or []
    s = select.select_sets(
        shards=inp["shards"] if isinstance(inp["shards"], list) else [inp["shards"]],
        target=params["target"],
        retain_size=int(params["retain_size"] or 0),  # None: the retain set is shared
        seed=int(params["seed"]),
        forget_out=out["forget"],
        retain_out=out.get("retain"),  # none: the shared retain set (select_retain)
        summary_out=out["summary"],
        target_id=params["target_id"],
        heldout_out=out.get("heldout"),
        heldout_shards=held if isinstance(held, list) else [held],
        heldout_fraction=float(params["heldout_fraction"]),
    )
    print(
        f"{s['target']}: forget {s['forget']}, retain {s['retain']}, held-out {s.get('heldout')} "
        f"of {s['scanned']} scanned; dropped {s['dropped']}"
    )


def select_retain(inp: dict, out: dict, params: dict) -> None:
    """Rule ``select_retain``: the retain set shared by every target."""
    from ..data import select

    s = select.select_retain(
        shards=inp["shards"] if isinstance(inp["shards"], list) else [inp["shards"]],
        targets=params["targets"],
        retain_size=int(params["retain_size"]),
        seed=int(params["seed"]),
        retain_out=out["retain"],
        summary_out=out["summary"],
        heldout_fraction=float(params["heldout_fraction"]),
    )
    print(f"shared retain set: {s['retain']} of {s['scanned']} scanned, excluding {sorted(s['excluded_targets'])}; "
          f"dropped {s['dropped']}")
