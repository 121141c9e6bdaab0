"""The report's own pages: the landing page (the description, then the main results of the run) and the run's
configuration as a result. Written by their own rules, from ``results/summary.csv`` and the configuration."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.console import headline
from ..core.fileio import atomic_outputs, json_text


def landing_page(
    *, template: str | os.PathLike[str], summary_csv: str | os.PathLike[str], out: str | os.PathLike[str]
) -> None:
    """The report's landing page, written to ``out``: ``template`` (reStructuredText with Jinja, as Snakemake
    renders it) with the main results from ``summary_csv`` before its paragraph on the exact configuration (or at
    its end). The Snakefile shows it once the ``report_landing`` rule has written it, the bare template before."""
    text = Path(template).read_text()
    table = headline(summary_csv).replace("{", "{{ '{' }}").replace("}", "{{ '}' }}")  # literal for Jinja
    block = (
        "Main results of this run (means over seeds; every number in ``results/summary.csv``, the full "
        "table under Overview → Tables)::\n\n" + "\n".join("    " + line for line in table.splitlines()) + "\n\n"
    )
    marker = "The exact configuration"  # the results before it, if the page has it
    text = text.replace(marker, block + marker, 1) if marker in text else text + "\n\n" + block
    with atomic_outputs(out) as (tmp,):
        tmp.write_text(text)
    logging.getLogger(__name__).info("wrote %s: %s with the main results of %s", out, template, summary_csv)


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

    text = json_text(config, sort_keys=True).rstrip("\n")
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
