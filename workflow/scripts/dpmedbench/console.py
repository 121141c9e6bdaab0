"""What the end of a run prints (Snakemake's ``onsuccess`` and ``onerror`` handlers). Standard library only: it
runs in the Snakemake process, whatever environment the jobs use (fileio is standard library too)."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from statistics import mean
from typing import Any

from .fileio import atomic_outputs
from .names import mechanism_label

ERROR_LINE = re.compile(r" (ERROR|CRITICAL) dpmedbench[.\w]*: (.*)")


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _mean(rows: list[dict[str, str]], key: str) -> float | None:
    values = [v for v in (_number(r.get(key)) for r in rows) if v is not None]
    return mean(values) if values else None


def headline(summary_csv: str | os.PathLike[str]) -> str:
    """The main results, one line per (dataset, mechanism, beta), means over seeds: the guarantee, test
    accuracy and AUROC, and the headline audit's epsilon lower bound with its ceiling.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "s.csv")
    >>> _ = open(path, "w").write("dataset,mechanism,beta,seed,epsilon,privacy_unit,accountant,delta,test_acc,"
    ...     "test_auroc,audit_epsilon_lb,audit_epsilon_ceiling\\nchest_xray,dpsgd,1.0,0,0.99,image,prv,0.0001,0.81,"
    ...     "0.9,0.0,5.1\\n")
    >>> print(headline(path))
    dataset     mechanism  β  ε                             test acc  AUROC  audit ε ≥ (ceiling)
    chest_xray  DP-SGD     1  0.99 per image (prv, δ=1e-4)  81.0 %    0.900  0.00 (5.10)
    """
    with open(summary_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    groups: dict[tuple[str, str, str], list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        groups[(row["dataset"], row["mechanism"], row["beta"])].append(row)
    table = [("dataset", "mechanism", "β", "ε", "test acc", "AUROC", "audit ε ≥ (ceiling)")]
    for (dataset, mechanism, beta), cells in groups.items():
        eps, acc, auroc = _mean(cells, "epsilon"), _mean(cells, "test_acc"), _mean(cells, "test_auroc")
        lb, ceiling = _mean(cells, "audit_epsilon_lb"), _mean(cells, "audit_epsilon_ceiling")
        first = cells[0]
        delta = _number(first.get("delta"))
        guarantee = "none"
        if eps is not None:
            guarantee = f"{eps:.3g} per {first.get('privacy_unit') or '?'}"
            if mechanism == "dpsgd":
                guarantee += f" ({first.get('accountant')}, δ={delta:.0e})".replace("e-0", "e-")
        table.append((
            dataset, mechanism_label(mechanism), f"{float(beta):g}" if mechanism != "none" else "–", guarantee,
            f"{100 * acc:.1f} %" if acc is not None else "n/a", f"{auroc:.3f}" if auroc is not None else "n/a",
            f"{lb:.2f} ({ceiling:.2f})" if lb is not None and ceiling is not None else "n/a",
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table)


def landing_page(
    template: str | os.PathLike[str], summary_csv: str | os.PathLike[str], out: str | os.PathLike[str]
) -> str:
    """The report's landing page: ``template`` (reStructuredText with Jinja, as Snakemake renders it) followed
    by the main results from ``summary_csv`` when a run has written it. Returns ``out``'s absolute path."""
    text = Path(template).read_text()
    if Path(summary_csv).exists():
        table = headline(summary_csv).replace("{", "{{ '{' }}").replace("}", "{{ '}' }}")  # literal for Jinja
        block = (
            "Main results of this run (means over seeds; every number in ``results/summary.csv``, the full "
            "table under Overview → Tables)::\n\n" + "\n".join("    " + line for line in table.splitlines()) + "\n\n"
        )
        marker = "The exact configuration"  # the results before it, if the page has it
        text = text.replace(marker, block + marker, 1) if marker in text else text + "\n\n" + block
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_outputs(out) as (tmp,):  # every Snakemake process parses the Snakefile, jobs included
        tmp.write_text(text)
    return str(out)


def write_configuration(
    config: Mapping[str, Any], *, out_json: str | os.PathLike[str], out_html: str | os.PathLike[str]
) -> None:
    """The run's configuration, defaults filled in, as JSON and as a page of the report.

    >>> import tempfile, os, json
    >>> d = tempfile.mkdtemp()
    >>> out_json, out_html = os.path.join(d, "c.json"), os.path.join(d, "c.html")
    >>> write_configuration({"betas": [1, 2]}, out_json=out_json, out_html=out_html)
    >>> json.load(open(out_json))["betas"], "&quot;betas&quot;" in open(out_html).read()
    ([1, 2], True)
    """
    from html import escape

    text = json.dumps(config, indent=2, sort_keys=True)
    page = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head><body style="font-family:sans-serif">\n'
        "<p>The configuration of this run, with the schema's defaults filled in. Settings that change only speed "
        "or memory (device, model.eval_batch, dpsgd.max_physical_batch, ldp.chunk_images) are left out: they do "
        f"not change results.</p>\n<pre>{escape(text)}</pre>\n</body></html>\n"
    )
    with atomic_outputs(out_json, out_html) as (json_tmp, html_tmp):
        json_tmp.write_text(text + "\n")
        html_tmp.write_text(page)
    logging.getLogger(__name__).info("wrote %s and %s: %d top-level keys", out_json, out_html, len(config))


def on_success(root: str | os.PathLike[str], configfiles: list[str]) -> str:
    """The end-of-run message: the headline results and where everything is."""
    root = Path(root)
    summary = root / "results" / "summary.csv"
    if not summary.exists():
        return "dp-medbench: done (no results/summary.csv yet: the targets run did not include the summary)"
    config = " ".join(f"--configfile {c}" for c in configfiles)
    report = root / "results" / "report.html"
    return (
        f"dp-medbench: done. Main results (means over seeds; full table: results/tables/main.md):\n\n"
        f"{headline(summary)}\n\n"
        f"Every number: results/summary.csv (one row per cell); figures: results/figures/; tables: results/tables/.\n"
        + (f"Report: {report} (rebuild: snakemake --report results/report.html {config})".replace(" )", ")")
           if report.exists() else
           f"Report (one self-contained page): snakemake --report results/report.html {config}".rstrip())
    )  # fmt: skip


def on_error(root: str | os.PathLike[str], since: float) -> str:
    """The end-of-error-run message: the last dp-medbench error of every rule log written since ``since``
    (the workflow's start), with its log, so the fix is the last thing on the screen."""
    found = []
    for path in sorted(Path(root, "logs").rglob("*.log")):
        if path.stat().st_mtime < since:
            continue
        errors = [
            m.group(2) for line in path.read_text(errors="replace").splitlines() if (m := ERROR_LINE.search(line))
        ]
        if errors:
            found.append(f"- {errors[-1]}\n  (log: {path.relative_to(root)})")
    if not found:
        return "dp-medbench: the run failed; the Snakemake messages above name the failed jobs and their logs."
    return "dp-medbench: the run failed. What went wrong, and what to do:\n" + "\n".join(found)
