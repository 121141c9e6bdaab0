"""Digests of the package's own source, used as Snakemake ``params`` so that editing a module reruns
exactly the jobs that run it (Snakemake itself only notices the edit of a rule's script file).

A rule's digest covers every package module its script can execute: the modules the script imports, all they
import in turn (imports inside functions included), and the ``__init__`` of every package on the way (Python runs
them first), found by reading the source, so the lists cannot drift from the code.

Modules are named by their dotted path inside the package (``training.dpsgd.plan``); a subpackage by its own
name (``training``, its ``__init__.py``), the package itself by ``__init__``.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PACKAGE = PACKAGE_DIR.name
TOP = "__init__"


def module_file(name: str) -> Path:
    """The source file of a package module (``core.names`` -> ``core/names.py``) or subpackage (``core`` ->
    ``core/__init__.py``; :data:`TOP` -> the package's own ``__init__.py``).

    >>> module_file("core.names").relative_to(PACKAGE_DIR).as_posix(), module_file("core").name
    ('core/names.py', '__init__.py')
    """
    if name == TOP:
        return PACKAGE_DIR / "__init__.py"
    base = PACKAGE_DIR.joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _exists(name: str) -> bool:
    return bool(name) and module_file(name).is_file()


def _is_package(name: str) -> bool:
    return name == TOP or module_file(name).name == "__init__.py"


def _resolve(target: str, node: ast.ImportFrom) -> set[str]:
    """The package modules one ``from <target> import names`` statement runs (``target``: the module or package
    named, ``""`` for the package itself); a name that is a submodule counts as one."""
    found = {target or TOP}
    for alias in node.names:
        child = ".".join(p for p in (target, alias.name) if p)
        if _exists(child):
            found.add(child)
    return found


def _imported_modules(tree: ast.AST, *, importer: str | None) -> set[str]:
    """Package modules named by the import statements of one file (anywhere in it). ``importer``: the file's
    own module name inside the package (relative imports resolve against it), ``None`` for a file outside it."""
    found: set[str] = set()
    here = [] if importer is None or importer == TOP else importer.split(".")
    if importer is not None and not _is_package(importer):
        here = here[:-1]  # a module's relative imports start from its package
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level and importer is not None:
                if node.level - 1 > len(here):
                    raise ImportError(f"{importer}: relative import beyond the package")
                base = here[: len(here) - (node.level - 1)]
                found |= _resolve(".".join([*base, *([node.module] if node.module else [])]), node)
            elif node.level == 0 and node.module and node.module.split(".")[0] == PACKAGE:
                found |= _resolve(node.module.partition(".")[2], node)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE:
                    found.add(".".join(parts[1:]) or TOP)
    return found


def _with_packages(name: str) -> set[str]:
    """A module and every package above it (``training.dpsgd.plan``: ``training``, ``training.dpsgd``, top)."""
    parts = [] if name == TOP else name.split(".")
    return {TOP, *(".".join(parts[:i]) for i in range(1, len(parts) + 1))}


def module_closure(*modules: str) -> list[str]:
    """The named modules, every package module they import, transitively, and the ``__init__`` of every package
    that contains one of them.

    >>> closure = module_closure("training.cell")
    >>> {"training.cell", "training.plans", "training.loop", "training.models", "core.fileio", "__init__"} <= set(
    ...     closure)
    True
    >>> "results.figures" in closure, "training.dpsgd.step" in closure  # plans are imported by name (PLAN_MODULES)
    (False, False)
    >>> "training.dpsgd.step" in module_closure("training.dpsgd.plan")
    True
    """
    seen: set[str] = set()
    todo = [m for name in modules for m in _with_packages(name)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(m for imported in package_imports(name) for m in _with_packages(imported) if m not in seen)
    return sorted(seen)


@functools.cache
def package_imports(name: str) -> frozenset[str]:
    """The package modules one package module imports, parsed once per process (every rule's digest walks the
    same modules)."""
    path = module_file(name)
    if not path.is_file():
        raise FileNotFoundError(f"{PACKAGE}.{name}: no module {path}")
    return frozenset(_imported_modules(ast.parse(path.read_text(), str(path)), importer=name))


def script_modules(script: str | os.PathLike[str]) -> list[str]:
    """The package modules a Snakemake script imports directly (``from dpmedbench.training.cell import run_cell``)."""
    path = Path(script)
    return sorted(_imported_modules(ast.parse(path.read_text(), str(path)), importer=None))


def code_digest(*modules: str) -> str:
    """Short SHA-256 over the source of the named modules and everything they import from the package.

    >>> len(code_digest("data.splits", "data.imaging"))
    16
    """
    h = hashlib.sha256()
    for name in module_closure(*modules):
        h.update(name.encode() + b"\0" + module_file(name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def script_digest(script: str | os.PathLike[str]) -> str:
    """:func:`code_digest` of the package code a Snakemake script runs."""
    return code_digest(*script_modules(script))
