"""The package's layout: one folder per stage of the pipeline, imports that run one way between them, and units a
person can read at once."""

from __future__ import annotations

import ast

import pytest
from dpmedbench.core.digest import PACKAGE_DIR, TOP, module_closure, module_file, package_imports

#: The stages, in the order data flows; a stage may import its own modules and those of earlier stages only.
STAGES = ("core", "data", "ldp", "training", "results")
#: Outside the chain: they may import any stage, and no stage imports them.
CONSUMERS = ("bench", "preflight")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
MAX_TOP_MODULES = 6


def _modules() -> list[str]:
    """Every module of the package by its dotted name (packages by their own name, the package itself TOP)."""
    out = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts) or TOP)
    return out


def _direct(name: str) -> set[str]:
    """The package modules ``name`` imports directly (anywhere in it), without itself."""
    return set(package_imports(name)) - {name}


def _stage(name: str) -> str | None:
    head = name.split(".")[0]
    return head if head in STAGES + CONSUMERS else None


def test_the_stages_are_folders_and_few_modules_stay_at_the_top():
    top = sorted(p.name for p in PACKAGE_DIR.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top
    for stage in (*STAGES, "bench", "training.dpsgd"):
        init = module_file(stage)
        assert init.name == "__init__.py" and init.is_file(), stage
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 80, f"{init}: say what the stage reads and writes"
    assert {_stage(m) for m in _modules()} - {None} == set(STAGES + CONSUMERS)


def test_imports_run_one_way_between_the_stages():
    """results -> training -> ldp -> data -> core, never back; nothing imports the benchmarks or the pre-flight."""
    wrong = []
    for name in _modules():
        here = _stage(name)
        for imported in _direct(name):
            there = _stage(imported)
            if there is None:
                continue  # the package itself (its version)
            if (there in CONSUMERS and here != there) or (here in STAGES and STAGES.index(there) > STAGES.index(here)):
                wrong.append(f"{name} -> {imported}")
    assert not wrong, "imports against the flow of the pipeline: " + ", ".join(wrong)


def test_no_import_circle():
    graph = {name: _direct(name) for name in _modules()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph.get(name, ())):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join([*path[path.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_modules_and_functions_fit_a_reading():
    long_modules, long_functions = [], []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(PACKAGE_DIR)} ({len(text.splitlines())} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(PACKAGE_DIR)}:{node.lineno} {node.name} ({lines})")
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_evaluation_runs_none_of_the_training_code():
    """The evaluate rule's closure may hold the network and the canaries (to load a model and audit it), never
    the code that trains: editing the loop, a plan or DP-SGD re-evaluates nothing by itself."""
    closure = set(module_closure("results.evaluate"))
    assert {"training.models", "training.canaries"} <= closure
    trains = {"training.cell", "training.loop", "training.plans", "training.checkpoint"}
    assert not closure & trains and not [m for m in closure if m.startswith("training.dpsgd")]


def test_the_digest_follows_imports_through_subpackages():
    """Relative imports at every depth resolve to the module they name, with the packages on the way."""
    closure = set(module_closure("training.dpsgd.plan"))
    assert {"training.dpsgd.step", "training.dpsgd.bookkeeping", "training.plans", "core.privacy"} <= closure
    assert {TOP, "training", "training.dpsgd", "core"} <= closure
    assert _direct("training.dpsgd.plan") >= {"training.dpsgd.accounting", "training.dpsgd.sampling"}
