"""The file formats of a results table: markdown, LaTeX that compiles and fits a page, and a self-contained HTML
page for the report; every format of a table written at once (:func:`write_table`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..core.fileio import atomic_outputs

log = logging.getLogger(__name__)


#: Unicode the tables use, as LaTeX (pdflatex with the default fonts knows none of it).
LATEX = {
    "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "±": r"$\pm$", "ε": r"$\varepsilon$", "β": r"$\beta$",
    "δ": r"$\delta$", "σ": r"$\sigma$", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$", "–": "--",
    "—": "---", "†": r"\textdagger{}", "‡": r"\textdaggerdbl{}", "→": r"$\rightarrow$", "…": r"\ldots{}",
    "·": r"$\cdot$",
}  # fmt: skip


#: Value columns per LaTeX table: more are split over several tables that repeat the key columns.
LATEX_COLUMNS = 5


def latex_escape(text: object) -> str:
    r"""Text for LaTeX, Unicode symbols included.

    >>> latex_escape("ε at δ = 1e-4, 50 % ± 1")
    '$\\varepsilon$ at $\\delta$ = 1e-4, 50 \\% $\\pm$ 1'
    """
    return "".join(LATEX.get(ch, ch) for ch in str(text))


def latex_tables(table: pd.DataFrame, caption: str, keys: int = 3) -> str:
    """booktabs tables that fit an article page: the first ``keys`` columns on the left of every part, the
    others :data:`LATEX_COLUMNS` at a time in wrapping ``tabularx`` columns (packages booktabs and tabularx)."""
    cols = list(table.columns)
    values = [cols[i : i + LATEX_COLUMNS] for i in range(keys, len(cols), LATEX_COLUMNS)] or [[]]
    # A long key (a mechanism's name) wraps in a narrow column instead of pushing the table off the page.
    key_specs = [
        "l" if table[c].astype(str).str.len().max() <= 12 else r">{\raggedright\arraybackslash}p{5.5em}"
        for c in cols[:keys]
    ]
    lines = []
    for part, group in enumerate(values, 1):
        shown = cols[:keys] + group
        note = f" (part {part} of {len(values)})" if len(values) > 1 else ""
        lines += [
            r"\begin{table}[tp]",
            r"\centering",
            r"\small",
            r"\setlength{\tabcolsep}{3pt}",
            f"\\caption{{{latex_escape(caption) if part == 1 else 'continued'}{note}}}",
            r"\begin{tabularx}{\linewidth}{"
            + "".join(key_specs)
            + r">{\raggedleft\arraybackslash}X" * len(group)
            + "}",
            r"\toprule",
            " & ".join(latex_escape(c) for c in shown) + r" \\",
            r"\midrule",
            *(" & ".join(latex_escape(v) for v in row) + r" \\" for row in table[shown].itertuples(index=False)),
            r"\bottomrule",
            r"\end{tabularx}",
            r"\end{table}",
            "",
        ]
    return "\n".join(lines)


def html_table(shown: pd.DataFrame, caption: str) -> str:
    """A self-contained HTML page with the table and its caption (shown inside the Snakemake report).

    >>> "<caption>c &amp; d</caption>" in html_table(pd.DataFrame({"a": [1]}), "c & d")
    True
    """
    from html import escape

    body = shown.to_html(index=False, na_rep="–", border=0, classes="results")
    body = body.replace('<table border="0" class="dataframe results">', '<table class="results">', 1)
    body = body.replace("<thead>", f"<caption>{escape(caption)}</caption>\n  <thead>", 1)
    style = (
        "body{font-family:sans-serif;font-size:13px;margin:8px} table{border-collapse:collapse} "
        "caption{caption-side:top;text-align:left;max-width:70em;margin-bottom:6px} "
        "th,td{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right} "
        "th{border-bottom:2px solid #333;vertical-align:bottom} "
        "td:nth-child(-n+3),th:nth-child(-n+3){text-align:left}"
    )
    head = f'<head><meta charset="utf-8"><style>{style}</style></head>'
    return f"<!DOCTYPE html>\n<html>{head}\n<body>\n{body}\n</body></html>\n"


def write_table(table: pd.DataFrame, shown: pd.DataFrame, caption: str, paths: Sequence[Path]) -> None:
    """``paths``: .csv (every column, unformatted), .md, .tex and .html (formatted)."""
    with atomic_outputs(*paths) as (csv_tmp, md_tmp, tex_tmp, html_tmp):
        table.to_csv(csv_tmp, index=False)
        md_tmp.write_text(f"{caption}\n\n{shown.to_markdown(index=False)}\n")
        tex_tmp.write_text(latex_tables(shown, caption))
        html_tmp.write_text(html_table(shown, caption))
    log.info("wrote %s: %d rows, %d columns", ", ".join(map(str, paths)), len(shown), len(shown.columns))
