"""Digests of the package's own source, used as Snakemake ``params`` so that editing a module reruns
exactly the jobs that run it (Snakemake itself only notices the edit of a rule's script file).

A rule's digest covers every package module its script can execute: the modules the script imports, and all
they import in turn (imports inside functions included), found by reading the source, so the lists cannot
drift from the code.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name


def _imported_modules(tree: ast.AST, *, inside_package: bool) -> set[str]:
    """Package modules named by the import statements of one file (anywhere in it)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            relative = inside_package and node.level == 1
            absolute = node.level == 0 and node.module is not None and node.module.split(".")[0] == PACKAGE
            if not (relative or absolute):
                continue
            base = node.module if relative else (node.module or "").partition(".")[2]
            if base:  # from .x import y / from dpmedbench.x import y
                found.add(base.split(".")[0])
            else:  # from . import x / from dpmedbench import x: x may be a module or a name in __init__
                found.update(a.name for a in node.names if (PACKAGE_DIR / f"{a.name}.py").exists())
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE and len(parts) > 1:
                    found.add(parts[1])
    return found


def module_closure(*modules: str) -> list[str]:
    """The named modules, every package module they import, transitively, and ``__init__`` (which Python runs
    before any of them).

    >>> closure = module_closure("train")
    >>> {"train", "plans", "loop", "models", "download", "fileio", "errors", "__init__"} <= set(closure)
    True
    >>> "report" in closure, "dpsgd" in closure  # plans are imported by name (names.PLAN_MODULES)
    (False, False)
    >>> "dpsgd" in module_closure("dpplan")
    True
    """
    seen: set[str] = set()
    todo = ["__init__", *modules]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_package_imports(name) - seen)
    return sorted(seen)


@functools.cache
def _package_imports(name: str) -> frozenset[str]:
    """The package modules one package module imports, parsed once per process (every rule's digest walks the
    same modules)."""
    path = PACKAGE_DIR / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"{PACKAGE}.{name}: no module {path}")
    return frozenset(_imported_modules(ast.parse(path.read_text(), str(path)), inside_package=True))


def script_modules(script: str | os.PathLike[str]) -> list[str]:
    """The package modules a Snakemake script imports directly (``from dpmedbench.train import run_cell``)."""
    path = Path(script)
    return sorted(_imported_modules(ast.parse(path.read_text(), str(path)), inside_package=False))


def code_digest(*modules: str) -> str:
    """Short SHA-256 over the source of the named modules and everything they import from the package.

    >>> len(code_digest("splits", "imaging"))
    16
    """
    h = hashlib.sha256()
    for name in module_closure(*modules):
        h.update(name.encode() + b"\0" + (PACKAGE_DIR / f"{name}.py").read_bytes() + b"\0")
    return h.hexdigest()[:16]


def script_digest(script: str | os.PathLike[str]) -> str:
    """:func:`code_digest` of the package code a Snakemake script runs."""
    return code_digest(*script_modules(script))
