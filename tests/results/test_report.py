"""Tables and figures from a summary and histories (built here, as the pipeline writes them)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from dpmedbench.results.figures import draw_figures
from dpmedbench.results.summary import COLUMNS
from dpmedbench.results.tables import PAPER_BASELINES, aggregate, write_tables

from ..support.latex import assert_fits_the_page, compile_tables


@pytest.fixture
def results(tmp_path):
    rng = np.random.default_rng(0)
    rows, cells, histories = [], [], []
    for dataset in ("chest_xray", "aptos"):
        for mechanism, betas in (("none", [0.0]), ("ldp-laplace_pixel", [1.0, 2.0]), ("dpsgd", [1.0, 2.0])):
            for beta in betas:
                for seed in (0, 1):
                    row = dict.fromkeys(COLUMNS)
                    row.update(
                        dataset=dataset,
                        mechanism=mechanism,
                        beta=beta,
                        seed=seed,
                        epsilon=None if mechanism == "none" else 1 / beta,
                        epsilon_membership=None if mechanism == "none" else 1 / beta,
                        epsilon_m_pixels=None if mechanism == "none" else (16 if mechanism == "dpsgd" else 1) / beta,
                        neighbourhood_pixels=16 if mechanism.startswith("ldp-") else None,
                        delta=1e-4 if mechanism == "dpsgd" else 0,
                        accountant="prv" if mechanism == "dpsgd" else None,
                        train_acc=rng.uniform(0.5, 1),
                        val_acc=rng.uniform(0.5, 1),
                        test_acc=0.6 + 0.1 * seed,
                        test_acc_max=0.9,
                        test_balanced_accuracy=0.6,
                        test_macro_f1=0.6,
                        test_auroc=0.7,
                        audit_auc=0.55,
                        audit_tpr_at_1pct_fpr=0.02,
                        epochs=3,
                    )
                    rows.append(row)
                    path = tmp_path / f"{dataset}-{mechanism}-{beta}-{seed}.csv"
                    pd.DataFrame(
                        {"epoch": [1, 2, 3], "train_acc": rng.uniform(0, 1, 3), "test_acc": rng.uniform(0, 1, 3)}
                    ).to_csv(path, index=False)
                    cells.append((dataset, mechanism, f"{beta:g}", seed))
                    histories.append(str(path))
    summary = tmp_path / "summary.csv"
    pd.DataFrame(rows, columns=COLUMNS).to_csv(summary, index=False)
    return summary, cells, histories


def test_aggregate_over_seeds(results):
    summary, _, _ = results
    table = aggregate(pd.read_csv(summary))
    assert len(table) == 10 and (table["seeds"] == 2).all()
    assert table["test_acc_mean"].tolist() == pytest.approx([0.65] * 10)
    assert table["test_acc_sd"].tolist() == pytest.approx([np.std([0.6, 0.7], ddof=1)] * 10)
    assert list(table["mechanism"][:5]) == ["none", "ldp-laplace_pixel", "ldp-laplace_pixel", "dpsgd", "dpsgd"]
    assert table.loc[table["mechanism"] == "none", "epsilon_mean"].isna().all()


def test_tables_in_three_formats(results, tmp_path):
    summary, _, _ = results
    main = [str(tmp_path / f"main.{e}") for e in ("csv", "md", "tex", "html")]
    paper = [str(tmp_path / f"paper.{e}") for e in ("csv", "md", "tex", "html")]
    write_tables(summary_csv=summary, main=main, paper=paper)
    md = (tmp_path / "main.md").read_text()
    assert "65.0 ± 7.1" in md and "| Local-DP" in md
    page = (tmp_path / "main.html").read_text()
    assert page.count("<tr") == 11 and "<caption>Results per dataset" in page and "65.0 ± 7.1" in page
    tex = (tmp_path / "main.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"$\pm$" in tex and "±" not in tex
    comparison = pd.read_csv(tmp_path / "paper.csv")
    baseline = comparison[(comparison["dataset"] == "chest_xray") & (comparison["mechanism"] == "no privacy")]
    assert baseline["paper test (%)"].astype(float).item() == PAPER_BASELINES["chest_xray"][1]
    assert baseline["ours test, best-test epoch (authors' protocol, %)"].item() == 90.0
    assert baseline["ours test, best-val epoch (%)"].item() == 65.0


def test_latex_tables_compile_and_fit_an_article_page(results, tmp_path):
    """Every table, with every optional column present, compiles with pdflatex (booktabs, tabularx) and fits
    the text width of a plain article page; no raw Unicode reaches LaTeX."""
    summary, _, _ = results
    frame = pd.read_csv(summary)
    for col in ("audit_lira_auc", "audit_lira_tpr_at_1pct_fpr", "audit_lira_epsilon_estimate",
                "audit_epsilon_estimate", "audit_epsilon_estimate_ceiling", "audit_canary_epsilon_lb",
                "audit_tpr_at_01pct_fpr", "epsilon_patient"):  # fmt: skip
        frame[col] = 0.5
    frame["privacy_unit"] = np.where(frame["mechanism"] == "dpsgd", "patient", "pixel value")
    frame["accountant"], frame["delta"] = "prv", 1e-4
    full = tmp_path / "full.csv"
    frame.to_csv(full, index=False)
    main = [tmp_path / f"main.{e}" for e in ("csv", "md", "tex", "html")]
    paper = [tmp_path / f"paper.{e}" for e in ("csv", "md", "tex", "html")]
    write_tables(summary_csv=full, main=[str(p) for p in main], paper=[str(p) for p in paper])
    for tex in (main[2], paper[2]):
        assert all(ord(ch) < 128 for ch in tex.read_text()), tex
    log = compile_tables(main[2], paper[2], folder=tmp_path)
    assert_fits_the_page(log)
    assert "part 1 of" in main[2].read_text()  # 20 columns do not fit one table


def test_single_seed_cells_get_bootstrap_intervals_in_the_figures(results, tmp_path, monkeypatch):
    """One seed: the privacy-utility plot and Figure 4 draw each cell's 95 % bootstrap interval."""
    from dpmedbench.results import figures

    summary, _, _ = results
    frame = pd.read_csv(summary)
    frame = frame[frame["seed"] == 0].assign(test_accuracy_ci_low=0.5, test_accuracy_ci_high=0.7)
    frame.to_csv(tmp_path / "one_seed.csv", index=False)
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, outputs, dpi: drawn.append(fig))
    figures.privacy_utility(summary_csv=str(tmp_path / "one_seed.csv"), outputs=[], dpi=60)
    figures.figure4(summary_csv=str(tmp_path / "one_seed.csv"), outputs=[], dpi=60)
    utility, fig4 = drawn
    # every ldp and dpsgd cell (2 datasets x 2 mechanisms x 2 betas) has an interval of 50-70 %
    bars = [c for ax in utility.axes for c in ax.collections if c.__class__.__name__ == "LineCollection"]
    segments = [s for c in bars for s in c.get_segments()]
    assert len(segments) == 8 and all(np.allclose(sorted(s[:, 1]), [50, 70]) for s in segments)
    bars4 = [c for ax in fig4.axes for c in ax.collections if c.__class__.__name__ == "LineCollection"]
    assert len([s for c in bars4 for s in c.get_segments()]) == 10  # and the baselines: 5 cells per dataset
    for fig in drawn:
        plt.close(fig)


def test_figures_are_drawn(results, tmp_path):
    summary, cells, histories = results
    names = ("figure3", "figure4", "privacy_utility", "audit", "audit_epsilon", "ldp_reidentification")
    outputs = {f"{n}_{e}": str(tmp_path / f"{n}.{e}") for n in names for e in ("png", "pdf")}
    draw_figures(summary_csv=str(summary), histories=histories, cells=cells, outputs=outputs, dpi=60)
    with pytest.raises(ValueError, match="no output path for"):
        draw_figures(summary_csv=str(summary), histories=histories, cells=cells, outputs={}, dpi=60)
    for path in outputs.values():
        head = Path(path).read_bytes()[:8]
        assert head.startswith(b"\x89PNG") if path.endswith("png") else head.startswith(b"%PDF")


def test_audit_plot_draws_lira_beside_the_loss_attack_only_when_it_ran(results, tmp_path, monkeypatch):
    from dpmedbench.results import figures

    summary, _, _ = results
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, outputs, dpi: drawn.append(fig))
    figures.audit_plot(summary_csv=str(summary), outputs=[], dpi=60)
    frame = pd.read_csv(summary)
    frame["audit_lira_auc"] = np.where(frame["mechanism"] == "none", 0.9, 0.6)
    frame.to_csv(tmp_path / "with_lira.csv", index=False)
    figures.audit_plot(summary_csv=str(tmp_path / "with_lira.csv"), outputs=[], dpi=60)
    legends = [{t.get_text() for t in fig.axes[0].get_legend().get_texts()} for fig in drawn]
    assert "LiRA (calibrated)" not in legends[0] and "chance" in legends[0]
    assert {"loss threshold", "LiRA (calibrated)", "chance"} <= legends[1]
    for fig in drawn:
        plt.close(fig)


def test_the_landing_page_puts_the_main_results_before_the_configuration(results, tmp_path):
    """The report_landing rule's page: the template, with the headline table (from summary.csv, braces escaped
    for Jinja) before its paragraph on the exact configuration."""
    from dpmedbench.core.console import headline
    from dpmedbench.results.report import landing_page

    summary, _, _ = results
    template = tmp_path / "workflow.rst"
    template.write_text("Intro {{ snakemake.config }}.\n\nThe exact configuration is under Overview.\n")
    out = tmp_path / "results" / "report_landing.rst"
    out.parent.mkdir()
    landing_page(template=template, summary_csv=summary, out=out)
    text = out.read_text()
    intro, _, rest = text.partition("Main results of this run")
    assert intro == "Intro {{ snakemake.config }}.\n\n" and rest.rstrip().endswith(
        "The exact configuration is under Overview."
    )
    first_row = headline(summary).splitlines()[1]
    assert "    " + first_row in rest and rest.index(first_row) < rest.index("The exact configuration")


def test_the_audit_figures_read_the_membership_epsilon_from_the_summary(results, tmp_path, monkeypatch):
    """The whole-image axis is the summary's epsilon_membership column, not recomputed from other columns; a
    summary without it (an older version's) is refused by name."""
    from dpmedbench.results import auditfigures, figures

    summary, _, _ = results
    frame = pd.read_csv(summary)
    frame["epsilon_membership"] = frame["mechanism"].map({"dpsgd": 7.5, "ldp-laplace_pixel": 30.0})
    frame.to_csv(tmp_path / "membership.csv", index=False)
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, outputs, dpi: drawn.append(fig))
    figures.audit_plot(summary_csv=str(tmp_path / "membership.csv"), outputs=[], dpi=60)
    xs = {float(x) for ax in drawn[0].axes for line in ax.get_lines() for x in line.get_xdata()}
    assert xs - {0.0, 1.0} == {7.5, 30.0}  # every cell at its column's value (0 and 1: the chance line's ends)
    plt.close(drawn[0])
    frame.drop(columns="epsilon_membership").to_csv(tmp_path / "old.csv", index=False)
    for draw in (figures.audit_plot, auditfigures.audit_epsilon):
        with pytest.raises(ValueError, match="old.csv: no epsilon_membership column"):
            draw(summary_csv=str(tmp_path / "old.csv"), outputs=[], dpi=60)


def test_a_seeded_cell_shows_no_epsilon_and_why(results, tmp_path):
    """A cell whose noise came from the published seed has no epsilon in the tables: the ε column says so, with
    what would hold were the seed secret, and the caption explains the mark."""
    summary, _, _ = results
    frame = pd.read_csv(summary)
    seeded = frame["mechanism"] == "dpsgd"
    frame.loc[seeded, "epsilon_if_seed_secret"] = frame.loc[seeded, "epsilon"]
    frame.loc[seeded, "epsilon"] = None
    frame["noise_source"] = np.where(seeded, "seeded", "keyed")
    frame.to_csv(tmp_path / "seeded.csv", index=False)
    paths = {name: [tmp_path / f"{name}.{e}" for e in ("csv", "md", "tex", "html")] for name in ("main", "paper")}
    write_tables(summary_csv=tmp_path / "seeded.csv", main=paths["main"], paper=paths["paper"])
    text = paths["main"][1].read_text()
    assert "none: seeded (1 if the seed were secret) ‡" in text and "‡ noise drawn from the published seed" in text
