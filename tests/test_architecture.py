"""The layers of docs/architecture.md, checked on the import graph (read
from the source text, as the code fingerprints read it)."""

import sys

from unlearnflow.provenance import ROOT, direct_imports

# the modules the Snakefile imports while building the DAG
DAG_LAYER = {
    "unlearnflow",
    "unlearnflow.plan",
    "unlearnflow.layout",
    "unlearnflow.method_table",
    "unlearnflow.registry",
    "unlearnflow.provenance",
    "unlearnflow.seeds",
    "unlearnflow.targets",
    "unlearnflow.rerun",
    "unlearnflow.io",  # errors and atomic writes: the standard library only
}


def all_modules() -> list[str]:
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def top_level_libraries(name: str) -> set[str]:
    """The third-party packages a module imports when it is imported (its
    module-level statements; functions may import more, lazily)."""
    import ast

    from unlearnflow.provenance import module_file

    tree = ast.parse(module_file(name).read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return {f for f in found if f not in sys.stdlib_module_names and f != "unlearnflow"}


def test_the_dag_layer_imports_the_standard_library_and_itself_only():
    for name in sorted(DAG_LAYER):
        project, _ = direct_imports(name)
        assert set(project) <= DAG_LAYER, (name, sorted(set(project) - DAG_LAYER))
        assert top_level_libraries(name) == set(), name


def test_below_the_stages_nothing_imports_a_stage_or_the_plan():
    for name in all_modules():
        if name.startswith("unlearnflow.stages") or name in ("unlearnflow.cli", "unlearnflow.__main__"):
            continue
        project, _ = direct_imports(name)
        up = {m for m in project if m.startswith("unlearnflow.stages") or m == "unlearnflow.plan"}
        if name in DAG_LAYER:
            up.discard("unlearnflow.plan")
        assert not up, (name, sorted(up))


def test_every_rule_has_its_stage_named_like_it():
    import importlib

    from unlearnflow.registry import STAGES

    for rule, target in STAGES.items():
        module, func = target.split(":")
        assert module.startswith("unlearnflow.stages.") and func == rule, (rule, target)
        assert callable(getattr(importlib.import_module(module), func)), target
