"""Forget/retain selection: the caption matcher and the sets it builds."""

import json
from pathlib import Path

import pytest

from unlearnflow.data.select import Matcher, select_sets
from unlearnflow.data.shards import iter_samples, read_captions
from unlearnflow.io import UnlearnflowError


@pytest.mark.parametrize(
    "caption, hit",
    [
        ("Elon Musk at the launch", True),
        ("elon musk", True),
        ("ELON MUSK!", True),
        ("Elon_Musk", True),
        ("#Elon_Musk_2020", True),
        ("Elon  Musk (two spaces)", True),
        ("Elon Musk's rocket", True),
        ("photo: Elon Musk.", True),
        ("Elon Muskrat farm", False),  # word boundary at the end
        ("MrElon Musk", False),  # word boundary at the start
        ("Elon-Musk", False),  # a hyphen is not a space
        ("Musk, Elon", False),
        ("Elon", False),
    ],
)
def test_matcher_word_boundaries_case_underscores(caption, hit):
    assert Matcher("Elon Musk")(caption) is hit


def test_matcher_name_with_underscore_matches_spaces():
    m = Matcher("Elon_Musk")
    assert m("Elon Musk speaks") and m("elon_musk speaks")


def test_matcher_aliases_regex_and_case():
    m = Matcher("Mira Castell", aliases=["M. Castell", "Castellita"])
    assert m("interview with m. castell") and m("CASTELLITA live")
    assert not m("Castellitas")
    r = Matcher("Mira Castell", regex=r"\bcastell\s+\d{4}\b")
    assert r("castell 2019 tour") and not r("castell tour")
    cs = Matcher("Mira Castell", case_sensitive=True)
    assert cs("Mira Castell") and not cs("mira castell")
    nb = Matcher("Ann", word_boundary=False)
    assert nb("Annabel")  # the reference's plain substring behaviour, as an option
    assert not Matcher("Ann")("Annabel")


def test_matcher_bad_regex_is_named():
    with pytest.raises(UnlearnflowError, match="bad regex"):
        Matcher("x", regex="(")


def _select(shards, tmp_path, name="Mira Castell", retain=150, seed=0, sub="out", **target):
    out = tmp_path / sub
    summary = select_sets(
        shards,
        {"name": name, **target},
        retain_size=retain,
        seed=seed,
        forget_out=out / "forget.tar",
        retain_out=out / "retain.tar",
        summary_out=out / "summary.json",
        target_id="t",
    )
    return out, summary


def test_forget_and_retain_sets(small_shards, tmp_path):
    out, summary = _select(small_shards, tmp_path)
    m = Matcher("Mira Castell")
    forget = list(iter_samples(out / "forget.tar"))
    retain = list(iter_samples(out / "retain.tar"))
    assert forget and all(m(s.caption) for s in forget)
    assert not any(m(s.caption) for s in retain)
    assert len(retain) == 150
    assert not {s.key for s in forget} & {s.key for s in retain}
    # every matching caption of every shard is in the forget set
    matching = {k for shard in small_shards for k, c in read_captions(shard) if m(c)}
    assert {s.key for s in forget} == matching
    # samples are copied byte for byte with their keys
    source = {s.key: s for shard in small_shards for s in iter_samples(shard)}
    for s in forget + retain:
        assert s.files == source[s.key].files
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert summary["forget"] == len(forget) and summary["retain"] == 150
    assert summary["scanned"] == len(source)
    assert sum(v["forget"] for v in summary["per_shard"].values()) == len(forget)
    assert summary["matching"]["pattern"] == m.pattern.pattern
    # both shards contribute to the forget set
    assert all(v["forget"] > 0 for v in summary["per_shard"].values())


def test_rerun_gives_identical_tars(small_shards, tmp_path):
    a, _ = _select(small_shards, tmp_path, sub="a")
    b, _ = _select(small_shards, tmp_path, sub="b")
    for name in ("forget.tar", "retain.tar"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    # and rerunning into the same place (the reference's rerun gave an empty tar)
    c, _ = _select(small_shards, tmp_path, sub="a")
    assert (c / "forget.tar").read_bytes() == (b / "forget.tar").read_bytes()


def test_retain_is_seeded_and_grows_monotonically(small_shards, tmp_path):
    keys = lambda d: {s.key for s in iter_samples(d / "retain.tar", exts=())}  # noqa: E731
    a, _ = _select(small_shards, tmp_path, sub="a", seed=0, retain=100)
    b, _ = _select(small_shards, tmp_path, sub="b", seed=1, retain=100)
    c, _ = _select(small_shards, tmp_path, sub="c", seed=0, retain=200)
    assert keys(a) != keys(b)
    assert keys(a) < keys(c)


def test_retain_larger_than_candidates_is_recorded(small_shards, tmp_path):
    out, summary = _select(small_shards, tmp_path, retain=10**6)
    assert summary["retain_short"] is True
    assert summary["retain"] == summary["retain_candidates"]


def test_alias_extends_forget_set(small_shards, tmp_path):
    _, one = _select(small_shards, tmp_path, sub="a")
    _, two = _select(small_shards, tmp_path, sub="b", aliases=["Bram Okafor"])
    assert two["forget"] > one["forget"]


def test_empty_forget_set_is_an_error_and_writes_nothing(small_shards, tmp_path):
    with pytest.raises(UnlearnflowError) as err:
        _select(small_shards, tmp_path, name="Nobody Atall")
    msg = str(err.value)
    assert "'t'" in msg and "empty forget set" in msg and "scanned" in msg
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_corrupt_shard_names_the_file_and_writes_nothing(small_shards, tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(small_shards[0].read_bytes()[:50_000])  # truncated
    with pytest.raises(UnlearnflowError, match="bad.tar"):
        _select([small_shards[1], bad], tmp_path)
    assert not any((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def _png(seed: int) -> bytes:
    """A small PNG, a different picture for each seed."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _shard(path, rows):
    """rows: (key, caption or None, picture seed or None) -> a webdataset tar."""
    from unlearnflow.data.shards import Sample, ShardWriter

    with ShardWriter(path) as w:
        for key, caption, pic in rows:
            files = {}
            if caption is not None:
                files["txt"] = caption
            if pic is not None:
                files["png"] = _png(pic)
            w.write(Sample(key, files))
    return path


def _messy(tmp_path):
    """A part as a user meets it: the target's URL listed twice (once with no
    caption), empty captions, one picture under two other captions, a row
    without an image, near misses that must stay out of the forget set."""
    rows = [
        ("000", "Mira Castell on stage", 1),
        ("001", None, 1),  # same URL, null caption: the target's own picture
        ("002", "   ", 2),  # an empty caption
        ("003", "a red kite", 3),
        ("004", "a kite, red", 3),  # the same picture again
        ("005", "no picture here", None),
        ("006", "Mira Castellano sings", 6),  # a longer name containing the target
        ("007", "MiraCastell", 7),  # run together
        ("008", "castell walls", 8),  # the bare surname
    ] + [(f"{i:03d}", f"a photo number {i}", i) for i in range(9, 40)]
    return _shard(tmp_path / "part.tar", rows)


def test_retain_is_disjoint_from_forget_by_picture_and_takes_no_empty_caption(tmp_path):
    part = _messy(tmp_path)
    held = _shard(tmp_path / "held.tar", [("h0", "Mira Castell again", 100), ("h1", "Mira Castell, a copy", 1)])
    out = tmp_path / "out"
    summary = select_sets(
        [part], {"name": "Mira Castell"}, retain_size=100, seed=0, forget_out=out / "forget.tar",
        retain_out=out / "retain.tar", summary_out=out / "summary.json", target_id="mira",
        heldout_out=out / "heldout.tar", heldout_shards=[held],
    )  # fmt: skip
    forget = {s.key for s in iter_samples(out / "forget.tar")}
    retain = list(iter_samples(out / "retain.tar"))
    assert forget == {"000"}  # no near miss
    keys = {s.key for s in retain}
    assert "001" not in keys and "002" not in keys and "005" not in keys
    assert all(s.caption.strip() for s in retain)
    assert len({s.files["png"] for s in retain}) == len(retain)  # one copy of each picture
    assert len(keys & {"003", "004"}) == 1 and {"006", "007", "008"} <= keys
    # held-out: h1 is the training part's picture (a member), so only h0
    assert [s.key for s in iter_samples(out / "heldout.tar")] == ["h0"]
    assert summary["dropped"] == {
        "retain_empty_caption": 2, "no_image": 1, "heldout_rows_not_target": 0,
        "retain_same_image_as_forget": 0, "retain_duplicate_image": 1, "heldout_seen_in_training": 1,
    }  # fmt: skip
    assert summary["heldout"] == 1 and summary["heldout_source"] == {"shards": [str(held)]}
    assert summary["retain"] == len(retain) == 40 - 1 - 2 - 1 - 1  # forget, empty, no image, copy


def test_a_caption_naming_nothing_on_the_targets_picture_stays_out_of_retain(tmp_path):
    part = _shard(tmp_path / "p.tar", [("a", "Mira Castell", 1), ("b", "a portrait", 1), ("c", "a tree", 2)])
    held = _shard(tmp_path / "h.tar", [("h", "Mira Castell", 9)])
    out = tmp_path / "o"
    s = select_sets(
        [part], {"name": "Mira Castell"}, 10, 0, out / "f.tar", out / "r.tar", out / "s.json",
        heldout_out=out / "h.tar", heldout_shards=[held],
    )  # fmt: skip
    assert [x.key for x in iter_samples(out / "r.tar")] == ["c"]
    assert s["dropped"]["retain_same_image_as_forget"] == 1


def test_one_part_holds_out_a_share_of_its_rows_as_non_members(tmp_path):
    from unlearnflow.data.heldout import is_heldout

    rows = [(f"{i:04d}", f"Mira Castell photo {i}" if i % 4 == 0 else f"a view {i}", i) for i in range(400)]
    part = _shard(tmp_path / "part.tar", rows)

    def run(sub, seed=0):
        out = tmp_path / sub
        s = select_sets(
            [part], {"name": "Mira Castell"}, 50, seed, out / "forget.tar", out / "retain.tar",
            out / "summary.json", heldout_out=out / "heldout.tar", heldout_fraction=0.2,
        )  # fmt: skip
        sets = {n: {x.key for x in iter_samples(out / f"{n}.tar", exts=())} for n in ("forget", "retain", "heldout")}
        return out, s, sets

    out, s, sets = run("a")
    expected = {k for k, c, _ in rows if c.startswith("Mira") and is_heldout(k, 0.2, 0)}
    assert sets["heldout"] == expected and 10 < len(expected) < 40
    assert not sets["heldout"] & (sets["forget"] | sets["retain"]) and not sets["forget"] & sets["retain"]
    # held-out rows join no set, target or not
    assert not {k for k, _, _ in rows if is_heldout(k, 0.2, 0)} & (sets["forget"] | sets["retain"])
    assert len(sets["forget"]) + len(expected) == 100
    assert s["heldout_source"]["fraction"] == 0.2 and s["heldout"] == len(expected)
    # deterministic, and a seed of its own
    out2, _, again = run("b")
    assert again == sets and (out / "heldout.tar").read_bytes() == (out2 / "heldout.tar").read_bytes()
    assert run("c", seed=1)[2]["heldout"] != sets["heldout"]


def test_no_held_out_pair_fails_before_anything_is_written(tmp_path):
    part = _shard(tmp_path / "part.tar", [("a", "Mira Castell", 1), ("b", "a tree", 2)])
    held = _shard(tmp_path / "held.tar", [("h", "a lake", 3)])
    out = tmp_path / "out"
    with pytest.raises(UnlearnflowError, match=r"no held-out pair .*data.heldout_shards.*data.heldout_fraction"):
        select_sets(
            [part], {"name": "Mira Castell"}, 5, 0, out / "forget.tar", out / "retain.tar", out / "summary.json",
            target_id="mira", heldout_out=out / "heldout.tar", heldout_shards=[held],
        )  # fmt: skip
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(UnlearnflowError, match="not both or neither"):
        select_sets(
            [part], {"name": "Mira Castell"}, 5, 0, out / "f.tar", out / "r.tar", out / "s.json",
            heldout_out=out / "h.tar", heldout_shards=[held], heldout_fraction=0.1,
        )  # fmt: skip


def test_pretraining_leaves_out_exactly_the_held_out_rows(tmp_path):
    """The rows select_sets holds out as non-members are never trained on,
    or MIA would score members as non-members."""
    from unlearnflow.data.heldout import is_heldout
    from unlearnflow.models.clip import iter_pairs
    from unlearnflow.stages.models import pretrain_clip

    rows = [(f"{i:04d}", f"a view {i}", i) for i in range(60)]
    part = _shard(tmp_path / "part.tar", rows)
    kept = [k for k, _, _ in rows if not is_heldout(k, 0.25, 3)]
    assert 30 < len(kept) < 60
    (_, captions), = list(iter_pairs([part], 32, skip=lambda k: is_heldout(k, 0.25, 3)))
    assert captions == [f"a view {int(k)}" for k in kept]
    out = tmp_path / "m"
    params = {"train": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "weight_decay": 0.1, "warmup_steps": 1},
              "seed": 0, "device": "cpu", "threads": 1, "heldout_fraction": 0.25, "data_seed": 3}  # fmt: skip
    files = {"config": out / "open_clip_config.json", "weights": out / "open_clip_model.safetensors", "info": out / "model.json"}
    pretrain_clip({"shards": [str(part)]}, {k: str(v) for k, v in files.items()}, params)
    info = json.loads(files["info"].read_text())
    assert info["train"]["pairs"] == len(kept) and info["train"]["heldout_fraction"] == 0.25


def test_an_empty_shard_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    part = _shard(tmp_path / "part.tar", [("a", "Mira Castell", 1), ("b", "a tree", 2)])
    empty = _shard(tmp_path / "results/data/laion/00001.tar", [])
    with pytest.raises(UnlearnflowError, match="an empty shard") as e:
        select_sets([part, Path("results/data/laion/00001.tar")], {"name": "Mira Castell"}, 5, 0,
                    tmp_path / "f.tar", tmp_path / "r.tar", tmp_path / "s.json")  # fmt: skip
    # a file the pipeline made: the error says how to have it remade
    assert "results/data/laion/00001.tar" in str(e.value) and "rm results/data/laion/00001.tar" in str(e.value)
    assert empty.exists() and not (tmp_path / "f.tar").exists()


def test_the_readmes_by_hand_command_runs_on_one_shard_and_stage_help_lists_names(tmp_path, monkeypatch, capfd):
    """The README's `python -m unlearnflow select_sets ...` as written, on one
    shard; per-stage --help; a missing param named, not a raw KeyError."""
    import re as regex
    import shlex

    from conftest import REPO
    from unlearnflow.cli import main

    readme = (REPO / "README.md").read_text()
    command = regex.search(r"python -m unlearnflow select_sets (--input.*?)\n(?!\s)", readme, regex.S).group(1)
    argv = ["select_sets", *shlex.split(command.replace("\\\n", " "))]
    monkeypatch.chdir(tmp_path)
    rows = [(f"{i:03d}", "Mira Castell" if i % 5 == 0 else f"a view {i}", i) for i in range(150)]
    _shard(tmp_path / "results/data/laion/00000.tar", rows)
    assert main(argv) == 0
    assert len(list(iter_samples(tmp_path / "f.tar"))) == 30 and len(list(iter_samples(tmp_path / "r.tar"))) == 100

    assert main(["select_sets", "--help"]) == 0
    help_text = capfd.readouterr().out
    assert "--params JSON keys read: target, retain_size, seed, target_id, heldout_fraction" in help_text
    assert "shards" in help_text and "forget, retain, summary, heldout" in help_text
    params = regex.search(r"--params '(.*?)'", command).group(1).replace(', "heldout_fraction": 0', "")
    argv2 = [a if not a.startswith("{") else params for a in argv]
    assert main(argv2) == 1
    assert "stage select_sets needs --params key 'heldout_fraction'" in capfd.readouterr().err


def test_shared_retain_set_names_no_target_and_equals_the_own_set_for_one_target(small_shards, tmp_path):
    """One retain set for every target: no caption naming any of them, no
    target's picture; with a single target, the very samples of its own
    retain set (same hash order), so sharing changes nothing then."""
    from unlearnflow.data.select import select_retain

    mira = {"id": "mira_castell", "name": "Mira Castell"}
    kite = {"id": "kite", "name": "kite"}
    own, _ = _select(small_shards, tmp_path, retain=150)
    one = tmp_path / "one"
    select_retain(small_shards, {"mira_castell": mira}, 150, 0, one / "retain.tar", one / "s.json")
    assert (one / "retain.tar").read_bytes() == (own / "retain.tar").read_bytes()

    both = tmp_path / "both"
    s = select_retain(small_shards, {"mira_castell": mira, "kite": kite}, 150, 0, both / "retain.tar", both / "s.json")
    retain = list(iter_samples(both / "retain.tar"))
    assert len(retain) == s["retain"] == 150
    assert not any(Matcher("Mira Castell")(x.caption) or Matcher("kite")(x.caption) for x in retain)
    # no picture of a target's sample under another caption either
    target_pictures = {x.image_bytes for shard in small_shards for x in iter_samples(shard)
                       if Matcher("Mira Castell")(x.caption) or Matcher("kite")(x.caption)}  # fmt: skip
    assert not target_pictures & {x.image_bytes for x in retain}
    assert s["excluded_targets"]["kite"]["captions"] > 0 and s["excluded_targets"]["mira_castell"]["captions"] > 0
    assert json.loads((both / "s.json").read_text()) == s
    # the target's own selection then writes no retain set, and says so
    out = tmp_path / "noretain"
    summary = select_sets(small_shards, mira, 150, 0, out / "forget.tar", None, out / "summary.json")
    assert summary["retain"] == "shared" and not (out / "retain.tar").exists()
    with pytest.raises(UnlearnflowError, match="no target to exclude"):
        select_retain(small_shards, {}, 10, 0, both / "r.tar", both / "s2.json")


def test_shared_retain_set_leaves_out_the_held_out_rows(tmp_path):
    from unlearnflow.data.heldout import is_heldout
    from unlearnflow.data.select import select_retain

    rows = [(f"{i:04d}", f"Mira Castell photo {i}" if i % 4 == 0 else f"a view {i}", i) for i in range(300)]
    part = _shard(tmp_path / "part.tar", rows)
    out = tmp_path / "o"
    s = select_retain([part], {"m": {"name": "Mira Castell"}}, 500, 0, out / "r.tar", out / "s.json", heldout_fraction=0.2)
    keys = {x.key for x in iter_samples(out / "r.tar", exts=())}
    assert keys and not {k for k, _, _ in rows if is_heldout(k, 0.2, 0)} & keys
    assert s["retain_short"] and s["dropped"]["heldout_rows"] > 0
