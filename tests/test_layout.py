"""The layout: each folder of decnode/ is a floor, and imports run only from a floor to the same one or below.

Read from the source with `ast` (every import, the ones inside functions too), so an upward import fails here
before anything runs. Floors: the root modules (shared vocabulary) 0; nn/ and envs/ 1; net/ 2; comm/ 3; marl/ 4;
job/ 5; tools/ 6. The README's "Layout" section says the same in words.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "decnode"
FLOORS = {"root": 0, "nn": 1, "envs": 1, "net": 2, "comm": 3, "marl": 4, "job": 5, "tools": 6}
# Packages that are part of the root floor: the shared vocabulary grown past one module (topology/: the graph zoo,
# one file per graph, numpy only), imported by root modules (config.py checks a graph) and importing the root.
ROOT_PACKAGES = {"topology"}
SHIM = "decnode.run"  # `python -m decnode.run`: the one root module that imports a folder (job/run.py's main)
# Modules outside comm/ and job/ that import torch.distributed today, and why; the test fails if one is added,
# and also if one of these stops (so the list never claims more than is true).
DISTRIBUTED_ELSEWHERE = {
    "decnode.elastic": "group_store opens the elastic agent's TCPStore for init_process_group (used by comm/)",
    "decnode.tools.netmodel": "calibrate's ping-pong workers time raw gloo isend/irecv, below the transport",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def folder(module: str) -> str:
    """The layer folder a module lives in ("root" for decnode/*.py and the package itself)."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ROOT_PACKAGES:
        return "root"
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else "root"


def is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def imports(module: str) -> list[tuple[str, int]]:
    """(imported name, line) for every import in the module, relative ones resolved to absolute names; a name
    imported from a package (`from .. import yamlio`) counts as that module when it is one."""
    out = []
    for node in ast.walk(ast.parse(MODULES[module].read_text(), str(MODULES[module]))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package(module) else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for a in node.names:  # decnode: the module if `a` is one, else its package; others: the full name
                full = f"{target}.{a.name}"
                out.append((full if full in MODULES or not target.startswith("decnode") else target, node.lineno))
    return out


def decnode_imports(module: str) -> list[tuple[str, int]]:
    return [(name, line) for name, line in imports(module) if name == "decnode" or name.startswith("decnode.")]


def test_the_layout_is_what_this_test_reads():
    """Not vacuous: the folders exist, every module is read, and the imports between them are found."""
    assert {folder(m) for m in MODULES} == set(FLOORS)
    assert len(MODULES) >= 48 + len(FLOORS)  # the 48 modules of issue 25 and a package file per folder
    edges = {(folder(m), folder(t)) for m in MODULES for t, _ in decnode_imports(m)}
    assert {("job", "marl"), ("marl", "comm"), ("comm", "net"), ("net", "root"), ("tools", "job")} <= edges


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_to_the_same_floor_or_below(module):
    src = folder(module)
    for target, line in decnode_imports(module):
        dst = folder(target)
        if module == SHIM and target.startswith("decnode.job."):
            continue
        if src == "root":
            assert dst == "root", f"{MODULES[module]}:{line}: a root module imports {target} (folder {dst}/)"
        assert FLOORS[dst] <= FLOORS[src], (f"{MODULES[module]}:{line}: {src}/ (floor {FLOORS[src]}) imports "
                                            f"{target} from {dst}/ (floor {FLOORS[dst]}), a floor above it")
        assert target != SHIM, f"{MODULES[module]}:{line}: import decnode.job.run, not the shim"


def test_only_the_transport_and_the_launchers_import_torch_distributed():
    users = {m for m in MODULES for name, _ in imports(m)
             if name == "torch.distributed" or name.startswith("torch.distributed.")}
    assert users, "no module imports torch.distributed: the check reads nothing"
    elsewhere = {m for m in users if folder(m) not in ("comm", "job")}
    assert elsewhere == set(DISTRIBUTED_ELSEWHERE), (
        f"outside comm/ and job/: {sorted(elsewhere)}; known and explained: {sorted(DISTRIBUTED_ELSEWHERE)}")


def test_no_import_cycle_between_folders():
    graph: dict[str, set[str]] = {f: set() for f in FLOORS}
    for m in MODULES:
        if m == SHIM:  # the entry point: nothing imports it (checked above), so it closes no cycle
            continue
        graph[folder(m)] |= {folder(t) for t, _ in decnode_imports(m)} - {folder(m)}
    seen, path = set(), []

    def visit(node):
        if node in path:
            raise AssertionError("import cycle between folders: " + " -> ".join(path[path.index(node):] + [node]))
        if node not in seen:
            path.append(node)
            for nxt in sorted(graph[node]):
                visit(nxt)
            path.pop()
            seen.add(node)

    for node in sorted(graph):
        visit(node)


@pytest.mark.parametrize("name", sorted(set(FLOORS) - {"root"}))
def test_each_folder_says_what_lives_there_and_what_it_may_import(name):
    init = PACKAGE / name / "__init__.py"
    tree = ast.parse(init.read_text())
    doc = ast.get_docstring(tree)
    assert doc and "May import" in doc, f"{init}: a docstring saying what lives here and what it may import"
    if name != "envs":  # envs/__init__ holds env_factory (as before the layout); the others stay import-free
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                    and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")], (
            f"{init}: no imports, so importing a low layer stays cheap")
