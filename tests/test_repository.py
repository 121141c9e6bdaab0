"""Files a user of the repository relies on besides the code: the licence and the citation metadata."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_citation_metadata_cites_this_project_and_the_paper():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["license"] == "MIT"
    paper = cff["preferred-citation"]
    assert paper["title"] == "Benchmarking Differentially Private Residual Networks for Medical Imagery"
    assert [a["family-names"] for a in paper["authors"]] == ["Singh", "Sikka", "Kotti", "Trask"]
    assert paper["year"] == 2020 and "2005.13099" in paper["url"]


def test_the_licence_is_the_one_the_readme_and_citation_name():
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    assert "MIT licence (`LICENSE`)" in (REPO / "README.md").read_text()
