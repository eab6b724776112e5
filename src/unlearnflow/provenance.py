"""Where a result comes from: code fingerprints and provenance records.

**Code fingerprint of a rule.** The stage a rule runs (:data:`registry.STAGES`)
is one function of a stage module (``stages/X.py``, one per rules file).
That module's text, the modules it imports at its top level and inside that
function (and inside the module's functions that function names, so a
stage's neighbours in the module add nothing), every project
module those import (transitively, read from the source text, never
imported, so the Snakefile can compute it in milliseconds), the parent
packages that importing them executes, and the versions of the field
libraries those sources import (torch, open_clip, diffusers, ...) make up
what the job can run. A rule
generic over ``{method}`` adds that method's module
(:data:`registry.METHODS`). The sha256 over all of it is a ``params:`` value
of the rule, so Snakemake's params trigger reruns exactly the jobs whose code
changed: an edit of ``methods/slug.py`` reruns SLUG's unlearning jobs (and,
through their new outputs, what reads them), not the shards or another
method. Any byte counts, comments included: simple and correct beats clever.
The dispatcher (``workflow/scripts/stage.py``, ``unlearnflow.cli``) is glue
and not part of any fingerprint.

**Provenance record.** Every metrics record carries what produced it (the
rule, its code fingerprint, a hash of its params, the model's fingerprint,
the delta's sha256, the unlearning job's own record, seeds, feature
network), and every table row a short id of it; ``results/provenance.json``
maps each id to its record (rule ``provenance_index``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from .registry import METHOD_RULES, METHODS, STAGES

PACKAGE = "unlearnflow"
ROOT = Path(__file__).resolve().parent
# Glue, not part of any fingerprint: the registry (a rule's fingerprint holds
# its own entries instead, so adding a method reruns nothing), the method
# table (its defaults reach each job merged into the rule's params, so a
# changed default reruns the jobs it changes, and only those) and the
# dispatcher.
GLUE = frozenset({f"{PACKAGE}.registry", f"{PACKAGE}.method_table", f"{PACKAGE}.cli", f"{PACKAGE}.__main__"})

# import name -> distribution: the libraries whose version can change numbers
# (kernels, samplers, resizers, JPEG codecs, solvers). A rule's fingerprint
# holds the versions of those its sources import.
FIELD_LIBRARIES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "open_clip": "open_clip_torch",
    "diffusers": "diffusers",
    "transformers": "transformers",
    "cleanfid": "clean-fid",
    "timm": "timm",
    "sklearn": "scikit-learn",
    "scipy": "scipy",
    "numpy": "numpy",
    "PIL": "pillow",
    "img2dataset": "img2dataset",
}

# params that are no result: the job's threads, and the fingerprint itself
# (it has its own field in a record)
NOT_HASHED = ("threads", "code")


# ------------------------------------------------------------ source graph
def module_file(name: str) -> Path | None:
    """The source file of project module ``name`` (None if there is none)."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = ROOT.joinpath(*name.split(".")[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


# import statements, found in the text (ast.walk over the package costs ~0.3 s
# per DAG build; tests/test_provenance.py checks these against the ast)
_FROM = re.compile(r"^[ \t]*from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#;]*)", re.M)
_IMPORT = re.compile(r"^[ \t]*import[ \t]+([^\n#;]*)", re.M)


def _names(text: str) -> list[str]:
    text = text.strip().strip("()").replace("\\\n", " ")
    names = []
    for part in text.replace("\n", ",").split(","):
        part = part.split("#")[0].strip()
        if part:
            names.append(part.split()[0])
    return names


def _resolve(package: str, imports, froms) -> tuple[frozenset, frozenset]:
    """(project modules, top-level third-party names) of import statements
    read in package ``package``: ``imports`` the modules of ``import a.b``,
    ``froms`` (level, module, names) of ``from ..a import b``. ``from . import
    x`` counts x when x is a module."""
    project: set[str] = set()
    other: set[str] = set()

    def add(mod: str) -> None:
        if module_file(mod) is not None:
            project.add(mod)
        elif mod and mod.split(".")[0] != PACKAGE:
            other.add(mod.split(".")[0])

    for mod in imports:
        add(mod)
    for level, mod, aliases in froms:
        if level:
            base = package.split(".")
            base = base[: len(base) - (level - 1)]
            mod = ".".join(base + ([mod] if mod else []))
        add(mod)
        for alias in aliases:
            if module_file(f"{mod}.{alias}") is not None:
                project.add(f"{mod}.{alias}")
    return frozenset(project), frozenset(other)


def _package(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


@lru_cache(maxsize=None)
def direct_imports(name: str) -> tuple[frozenset, frozenset]:
    """(project modules, top-level third-party names) that the source of
    module ``name`` imports anywhere: at the top, in functions, relative or
    absolute. ``from . import x`` counts x when x is a module."""
    path = module_file(name)
    if path is None:
        raise ValueError(f"no source for module {name!r} under {ROOT}")
    text = path.read_text(encoding="utf-8")
    imports = [mod for m in _IMPORT.finditer(text) for mod in _names(m.group(1))]
    froms = [(len(m.group(1)), m.group(2), _names(m.group(3))) for m in _FROM.finditer(text)]
    return _resolve(_package(name, path), imports, froms)


_DEF = re.compile(r"(?:async[ \t]+)?def[ \t]+(\w+)")
# a name, called or passed on (a helper handed to another function runs too)
_NAME = re.compile(r"(?<![\w.`])(\w+)(?=[ \t]*[(,)])")
_COMMENT = re.compile(r"#[^\n]*")  # "(generate_t2i)" in a comment runs nothing


@lru_cache(maxsize=None)
def _stage_parts(name: str) -> tuple[Path, dict]:
    """The source file of stage module ``name`` and, for each of its
    top-level functions and for what runs on import (key None: everything
    but the function bodies), the module's functions it names (calls, or
    passes on: ``Family("clip", _load_clip, ...)``) and its
    import statements. Read from the text: a top-level function runs from
    its ``def`` line to the next line that starts in column 0 (a comment or
    a closing bracket excepted); tests/test_provenance.py checks this
    against the ast."""
    path = module_file(name)
    if path is None:
        raise ValueError(f"no source for module {name!r} under {ROOT}")
    segments: dict = {None: []}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if current is not None and (not line.strip() or line[0] in " \t#)]}"):
            segments[current].append(line)
            continue
        m = _DEF.match(line)
        current = m.group(1) if m else None
        segments.setdefault(current, []).append(line)
    parts = {}
    for key, lines in segments.items():
        text = "".join(lines)
        named = {w for w in _NAME.findall(_COMMENT.sub("", text)) if w in segments and w != key}
        imports = [mod for m in _IMPORT.finditer(text) for mod in _names(m.group(1))]
        froms = [(len(m.group(1)), m.group(2), _names(m.group(3))) for m in _FROM.finditer(text)]
        parts[key] = (named, imports, froms)
    return path, parts


@lru_cache(maxsize=None)
def stage_imports(name: str, function: str) -> tuple[frozenset, frozenset]:
    """What running ``function`` of stage module ``name`` imports, as
    :func:`direct_imports` says it: the module's top level (everything but
    its function bodies: that runs on import), ``function`` itself and,
    transitively, the module's functions it calls (its helpers). The other
    rules' functions beside it add nothing: stage modules import their
    algorithms inside each function for that."""
    path, parts = _stage_parts(name)
    if function is None or function not in parts:
        raise ValueError(f"stage module {name} has no function {function!r} (registry.STAGES names it)")
    todo, done, imports, froms = [None, function], set(), [], []
    while todo:
        key = todo.pop()
        if key in done:
            continue
        done.add(key)
        named, i, f = parts[key]
        imports += i
        froms += f
        todo += named
    return _resolve(_package(name, path), imports, froms)


@lru_cache(maxsize=None)
def closure(modules: tuple[str, ...], stage: str | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Every project module that importing ``modules`` can run (with the
    parent packages Python executes first), and the third-party top-level
    names their sources import; both sorted. ``stage`` ("module:function",
    as :data:`registry.STAGES` names it): that module's imports are those
    of its top level and of that function only (:func:`stage_imports`)."""
    stage_module, _, function = (stage or "").partition(":")
    seen: set[str] = set()
    other: set[str] = set()
    todo = list(modules)
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        if mod in GLUE:
            continue
        project, libs = stage_imports(mod, function) if mod == stage_module else direct_imports(mod)
        other |= libs
        todo += [m for m in (*project, *_parents(mod)) if m not in seen]
    return tuple(sorted(seen - GLUE)), tuple(sorted(other))


def rule_modules(rule: str, method: str | None = None) -> tuple[str, ...]:
    """The modules a rule's job starts from: its stage's, plus the method's
    for a rule generic over ``{method}``."""
    if rule not in STAGES:
        raise ValueError(f"rule {rule!r} has no stage; known stages: {sorted(STAGES)}")
    mods = [STAGES[rule].split(":")[0]]
    family = METHOD_RULES.get(rule)
    if family is not None:
        if method is None:
            raise ValueError(f"rule {rule!r} runs a {family} method: name it")
        if method not in METHODS[family]:
            raise ValueError(f"unknown {family} method {method!r}; known methods: {sorted(METHODS[family])}")
        mods.append(METHODS[family][method])
    return tuple(mods)


@lru_cache(maxsize=None)
def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@lru_cache(maxsize=None)
def library_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def describe(rule: str, method: str | None = None) -> dict:
    """What the fingerprint of ``rule`` covers: stage, source files (with
    their sha256), field libraries (with versions), Python."""
    modules, libs = closure(rule_modules(rule, method), STAGES[rule])
    files = {}
    for m in modules:
        path = module_file(m)
        files[path.relative_to(ROOT.parent).as_posix()] = _file_digest(path)
    family = METHOD_RULES.get(rule)
    return {
        "stage": STAGES[rule],
        "method": METHODS[family][method] if family else None,
        "files": files,
        "libraries": {FIELD_LIBRARIES[n]: library_version(FIELD_LIBRARIES[n]) for n in libs if n in FIELD_LIBRARIES},
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
    }


@lru_cache(maxsize=None)
def code_fingerprint(rule: str, method: str | None = None) -> str:
    """A 16-hex-digit digest of :func:`describe` (a rule's ``code`` param)."""
    return digest(describe(rule, method))[:16]


# ------------------------------------------------------------ records
def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()


def params_hash(params: dict) -> str:
    """What a job was asked to do: its params, less threads and code."""
    return digest({k: v for k, v in params.items() if k not in NOT_HASHED})[:16]


def record_id(record: dict) -> str:
    """The short id of a provenance record (its content's sha256)."""
    return digest(record)[:12]


_current: dict = {}


@contextlib.contextmanager
def running(rule: str, params: dict):
    """Set by the dispatcher around a stage, so :func:`this_job` can say
    which rule, code and params produced what the stage writes."""
    _current.update(rule=rule, params=params)
    try:
        yield
    finally:
        _current.clear()


def this_job(**extra) -> dict:
    """The record of the running job: rule, code fingerprint, params hash,
    the field libraries' versions (and ``extra``)."""
    if not _current:
        return {"rule": None, "code": None, "params_hash": None, **extra}
    params = _current["params"]
    rule = _current["rule"]
    libs = None
    if rule in STAGES:
        method = params.get("method") if rule in METHOD_RULES else None
        with contextlib.suppress(ValueError):
            libs = describe(rule, method)["libraries"]
    return {"rule": rule, "code": params.get("code"), "params_hash": params_hash(params), "libraries": libs, **extra}


def train_seed(model_info: dict):
    """The training seed a model folder's info records (None if imported)."""
    train = model_info.get("train")
    return train.get("seed") if isinstance(train, dict) else None


def delta_provenance(path) -> dict | None:
    """The unlearning job's record stored in a delta's metadata."""
    if not path:
        return None
    from safetensors import safe_open

    from .io import InputFileError

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise InputFileError(path, f"not a readable safetensors file ({exc})") from exc
    text = meta.get("provenance")
    return json.loads(text) if text else None


def evaluation_record(*, model_fingerprint: str, delta=None, seeds: dict, feature_net=None, **extra) -> dict:
    """The provenance of a metrics record written by the running evaluation
    job: this job, the model (base fingerprint, delta sha256), the
    unlearning job that made the delta, seeds, feature network."""
    from .io import sha256_file

    upstream = delta_provenance(delta)
    seeds = dict(seeds)
    if upstream is not None:
        seeds.setdefault("unlearn", upstream.get("seed"))
    return this_job(
        model={"fingerprint": model_fingerprint, "delta_sha256": sha256_file(delta) if delta else None},
        unlearn=upstream,
        seeds=seeds,
        feature_net=feature_net,
        **extra,
    )


def stamp(record: dict, provenance: dict) -> dict:
    """``record`` with its provenance and provenance id."""
    return {**record, "provenance": provenance, "provenance_id": record_id(provenance)}


def table_provenance(records: list[dict]) -> dict:
    """{id: provenance} of the records behind a table's rows."""
    out = {}
    for r in records:
        prov = r.get("provenance")
        if prov is None:
            continue
        out[r["provenance_id"]] = prov
    return out


def aggregate(ids: list[str], how: str) -> tuple[str, dict]:
    """The id and record of a row computed from other rows (a mean over
    targets): the member ids, in order."""
    record = {"aggregate": how, "of": list(ids)}
    return record_id(record), record


# ------------------------------------------------------------ external sources
def local_source(value) -> Path | None:
    """``value`` as a local file or folder when one exists there (else it is
    a name: an open_clip tag, a hub id)."""
    if not value or not isinstance(value, str):
        return None
    path = Path(os.path.expanduser(value))
    return path if path.exists() else None


def source_files(value) -> list[str]:
    """Every file of a local checkpoint (file or folder), sorted; [] for a
    name. Rules list them as inputs, so a replaced file reruns the import."""
    path = local_source(value)
    if path is None:
        return []
    if path.is_file():
        return [str(path)]
    return sorted(str(p) for p in path.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts))


def source_stamp(value) -> str | None:
    """Sizes and mtimes of a local checkpoint's files, hashed: a params value
    that changes when a file is replaced even by an older copy (``cp -p``),
    which the mtime trigger alone would miss."""
    files = source_files(value)
    if not files:
        return None
    root = local_source(value)
    base = root if root.is_dir() else root.parent
    stats = [(Path(f).relative_to(base).as_posix(), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    return digest(stats)[:16]
