"""The package layout holds: imports run from a higher stage down to a lower one, never back up, and no module
imports itself back through a cycle. Function-local imports count: deferring an import hides an arrow, it does not
remove it. The order is the one kd_bundle/__init__.py states."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "kd_bundle"
# Lower layers first. Packages of one layer are siblings: neither imports the other.
LAYERS: list[set[str]] = [
    {"config", "store", "store_records", "store_admin", "grid", "manifest", "models", "process_guard"},
    {"data", "teacher"},
    {"evaluation"},
    {"knowledge"},
    {"student"},
    {"report"},
    {"cli_errors", "__main__"},  # the command line: above every stage
]
RANK = {part: rank for rank, layer in enumerate(LAYERS) for part in layer}
STAGES = ("data", "teacher", "evaluation", "knowledge", "student", "report")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = ["kd_bundle", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, module) for every kd_bundle import in the file, at any depth; `from pkg import mod` names the module."""
    found = []
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("kd_bundle")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("kd_bundle"):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                is_module = (root.parent / (candidate.replace(".", "/") + ".py")).exists() or (
                    root.parent / candidate.replace(".", "/") / "__init__.py").exists()
                found.append((node.lineno, candidate if is_module else base))
    return found


def part_of(module: str) -> str:
    """The layer member a module belongs to: its stage package, or the top-level module itself."""
    return module.split(".")[1] if module != "kd_bundle" else "kd_bundle"


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_top_level_part_has_a_layer():
    parts = {part_of(name) for name in MODULES if name != "kd_bundle"}
    assert parts - set(RANK) == set(), "place the new top-level module or package in LAYERS (and kd_bundle/__init__.py)"
    assert set(STAGES) <= {p for p in parts if (PACKAGE / p).is_dir()}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_never_run_up_the_stages(name):
    source = part_of(name)
    wrong = []
    for line, target in imported_modules(MODULES[name]):
        to = part_of(target)
        if to == source or target == "kd_bundle":
            continue
        if RANK[to] == RANK[source] and not (PACKAGE / source).is_dir() and not (PACKAGE / to).is_dir():
            continue  # top-level modules of one layer may use each other (store reads config); cycles are checked below
        if RANK[to] >= RANK[source]:
            kind = "a sibling" if RANK[to] == RANK[source] else "a higher stage"
            wrong.append(f"{MODULES[name].relative_to(PACKAGE.parent)}:{line} imports {target} ({kind})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_modules():
    graph = {name: {t for _, t in imported_modules(path) if t in MODULES and t != name} for name, path in MODULES.items()}
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return trail + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, trail + [node])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            pytest.fail("import cycle: " + " -> ".join(cycle[cycle.index(cycle[-1]):]))


def test_the_library_never_imports_prefect_tasks_or_flows():
    offenders = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{name} imports {n}" for n in names if n.split(".")[0] in {"prefect", "tasks", "flows"}]
    assert not offenders, offenders


def test_the_checker_sees_an_arrow_up_and_a_cycle(tmp_path):
    """The walk above is only worth its green if it would go red: on a planted upward import and a planted cycle."""
    fake = tmp_path / "kd_bundle"
    (fake / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text("")
    (fake / "data" / "a.py").write_text("from kd_bundle.report.document import cli\nfrom kd_bundle.data import b\n")
    (fake / "data" / "b.py").write_text("def f():\n    from kd_bundle.data.a import cli\n")
    found = imported_modules(fake / "data" / "a.py", fake)
    assert (1, "kd_bundle.report.document") in found and (2, "kd_bundle.data.b") in found
    assert imported_modules(fake / "data" / "b.py", fake) == [(2, "kd_bundle.data.a")]
    assert RANK[part_of("kd_bundle.report.document")] > RANK[part_of("kd_bundle.data.a")]
