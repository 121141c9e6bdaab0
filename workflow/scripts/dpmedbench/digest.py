"""Digests of the package's own source, used as Snakemake ``params`` so that editing a module reruns
exactly the jobs that run it (Snakemake itself only notices the edit of a rule's script file)."""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def code_digest(*modules: str) -> str:
    """Short SHA-256 over the named modules' source files (``"prepare"`` for ``prepare.py``).

    >>> len(code_digest("splits", "imaging"))
    16
    """
    h = hashlib.sha256()
    for name in sorted(set(modules)):
        path = PACKAGE_DIR / f"{name}.py"
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]
