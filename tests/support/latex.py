"""pdflatex for the table tests: compile LaTeX tables inside a plain article page."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

DOCUMENT = r"""\documentclass{article}
\usepackage{booktabs}
\usepackage{tabularx}
\begin{document}
%s
\end{document}
"""


def compile_tables(*tables: Path, folder: Path) -> str:
    """Compile ``tables`` (``\\input`` one after the other) with pdflatex in ``folder``; the log. Skips without
    pdflatex unless DPMEDBENCH_REQUIRE_LATEX=1 (CI installs it)."""
    if shutil.which("pdflatex") is None:
        if os.environ.get("DPMEDBENCH_REQUIRE_LATEX") == "1":
            pytest.fail("DPMEDBENCH_REQUIRE_LATEX=1 but no pdflatex on PATH (Debian: texlive-latex-recommended)")
        pytest.skip("no pdflatex here (Debian: apt-get install texlive-latex-recommended)")
    body = "\n".join(f"\\input{{{t.resolve().as_posix()}}}\n\\clearpage" for t in tables)
    (folder / "doc.tex").write_text(DOCUMENT % body)
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = (folder / "doc.log").read_text(errors="replace") if (folder / "doc.log").exists() else proc.stdout
    assert proc.returncode == 0, log[-3000:]
    assert (folder / "doc.pdf").stat().st_size > 1000
    return log


def assert_fits_the_page(log: str) -> None:
    """No table wider than the text (pdflatex reports 'Overfull \\hbox' for anything that sticks out)."""
    overfull = [line for line in log.splitlines() if line.startswith("Overfull \\hbox")]
    assert not overfull, overfull
