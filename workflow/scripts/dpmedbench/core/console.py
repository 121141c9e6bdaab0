"""What the end of a run prints (Snakemake's ``onsuccess`` and ``onerror`` handlers). Standard library only: it
runs in the Snakemake process, whatever environment the jobs use (fileio is standard library too)."""

from __future__ import annotations

import csv
import os
import re
from collections import defaultdict
from pathlib import Path
from statistics import mean

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
    accuracy and AUROC, and the headline membership audit's epsilon estimate with its ceiling (an estimate: its
    membership was not randomised).

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "s.csv")
    >>> _ = open(path, "w").write("dataset,mechanism,beta,seed,epsilon,privacy_unit,accountant,delta,test_acc,"
    ...     "test_auroc,audit_epsilon_estimate,audit_epsilon_estimate_ceiling\\n"
    ...     "chest_xray,dpsgd,1.0,0,0.99,image,prv,0.0001,0.81,0.9,0.0,5.1\\n")
    >>> print(headline(path))
    dataset     mechanism  β  ε                             test acc  AUROC  MIA ε estimate (ceiling)
    chest_xray  DP-SGD     1  0.99 per image (prv, δ=1e-4)  81.0 %    0.900  0.00 (5.10)
    """
    with open(summary_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    groups: dict[tuple[str, str, str], list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        groups[(row["dataset"], row["mechanism"], row["beta"])].append(row)
    table = [("dataset", "mechanism", "β", "ε", "test acc", "AUROC", "MIA ε estimate (ceiling)")]
    for (dataset, mechanism, beta), cells in groups.items():
        eps, acc, auroc = _mean(cells, "epsilon"), _mean(cells, "test_acc"), _mean(cells, "test_auroc")
        lb, ceiling = _mean(cells, "audit_epsilon_estimate"), _mean(cells, "audit_epsilon_estimate_ceiling")
        first = cells[0]
        delta = _number(first.get("delta"))
        guarantee = "none (seeded noise)" if first.get("noise_source") == "seeded" else "none"
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
