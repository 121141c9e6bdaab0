"""End-to-end runs of the real Snakemake workflow, in a copy of the repository, on generated archives."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from dpmedbench.core.fileio import source_digest
from dpmedbench.data import synth

from ..conftest import REPO, clone, extract, rewrite_zip
from ..support import chromium
from ..support.latex import assert_fits_the_page, compile_tables

pytestmark = pytest.mark.e2e
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return clone(tmp_path)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One full run of the demo (every stage, every cell), shared by the tests that inspect or dry-run it."""
    workdir = clone(tmp_path_factory.mktemp("demo"))
    proc = snakemake(workdir, "--configfile", "config/demo.yaml")
    (workdir / "console.txt").write_text(proc.stdout + proc.stderr)  # what the user saw
    return workdir


def data_targets(*datasets: str) -> list[str]:
    """The data stage's outputs only: tests of the import need not train anything."""
    return [f"data/prepared/{d}/info.json" for d in datasets]


def snakemake(workdir: Path, *args: str, config: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "--cores", "2", *args]
    if config is not None:
        (workdir / "test.yaml").write_text(yaml.safe_dump(config))
        cmd += ["--configfile", "test.yaml"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env, timeout=1800)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def check_prepared(workdir: Path, dataset: str, size: int, channels: int) -> dict:
    out = workdir / "data" / "prepared" / dataset
    info = json.loads((out / "info.json").read_text())
    for split in ("train", "val", "test"):
        arr = np.load(out / f"{split}.npy", mmap_mode="r")
        man = pd.read_csv(out / f"{split}.csv")
        assert arr.shape == (len(man), size, size, channels) and arr.dtype == np.uint8
        assert len(man) == sum(info["counts"][split].values()) > 0
    assert info["source"]["sha256"] and len(info["source"]["sha256"]) == 64
    return info


def test_demo_runs_every_stage_and_then_has_nothing_to_do(demo):
    chest = check_prepared(demo, "chest_xray", 48, 1)
    aptos = check_prepared(demo, "aptos", 48, 3)
    assert any("duplicate tree" in n for n in chest["notes"])
    assert any("test_images" in n for n in aptos["notes"])
    assert chest["source"]["source"] == "demo" and (demo / "logs" / "prepare" / "chest_xray.log").exists()
    check_ldp(demo, "chest_xray", "laplace_pixel", np.int16, (48, 48, 1))
    check_ldp(demo, "aptos", "laplace_image_shift", np.uint8, (48, 48, 3))
    check_ldp(demo, "chest_xray", "dp_pix", np.int16, (48, 48, 1))
    check_ldp(demo, "aptos", "dp_pix", np.int16, (48, 48, 3))
    for dataset in ("chest_xray", "aptos"):
        for ext in ("png", "pdf"):
            assert (demo / "results" / "figures" / f"figure2_{dataset}.{ext}").stat().st_size > 1000
    cells = sorted(demo.glob("results/cells/*/*/beta*/seed*/metrics.json"))
    assert len(cells) == 2 * (1 + 2 * 3 + 3)  # none, two Local-DP mechanisms and DP-SGD at three betas
    for path in cells:
        metrics = json.loads(path.read_text())
        assert {p.name for p in path.parent.iterdir()} == {
            "history.csv",
            "best.pt",
            "last.pt",
            "metrics.json",
            "evaluation.json",
        }
        history = pd.read_csv(path.parent / "history.csv")
        epochs = _demo_config(demo)["datasets"][metrics["cell"]["dataset"]]["train"]["epochs"]
        assert list(history["epoch"]) == list(range(1, epochs + 1))
        privacy = metrics["privacy"]
        if metrics["cell"]["mechanism"] == "dpsgd":
            target = 1 / metrics["cell"]["beta"]
            assert target - 0.02 < privacy["epsilon"] <= target + 1e-6 and privacy["accountant"] == "prv"
            assert history["epsilon_rdp"].is_monotonic_increasing
        evaluation = json.loads((path.parent / "evaluation.json").read_text())
        assert evaluation["cell"] == metrics["cell"] and evaluation["test"]["n"] == 12
        assert ("quadratic_kappa" in evaluation["test"]) == (metrics["cell"]["dataset"] == "aptos")
        is_ldp = metrics["cell"]["mechanism"].startswith("ldp-")
        expected_audits = {"noisy_members", "clean_members"} if is_ldp else {"members"}
        if metrics["cell"]["mechanism"] == "dpsgd" and metrics["cell"]["dataset"] == "aptos":
            expected_audits.add("canaries")  # the demo's one-run canary audit
        assert set(evaluation["audit"]) == expected_audits
    summary = pd.read_csv(demo / "results" / "summary.csv")
    for name in ("main", "paper_comparison"):
        for ext in ("csv", "md", "tex", "html"):
            assert (demo / "results" / "tables" / f"{name}.{ext}").stat().st_size > 100
    for name in FIGURES:
        for ext in ("png", "pdf"):
            assert (demo / "results" / "figures" / f"{name}.{ext}").stat().st_size > 1000
    assert len(summary) == len(cells) and summary["audit_auc"].between(0, 1).all()
    assert summary.loc[summary["mechanism"] == "none", "epsilon"].isna().all()
    again = snakemake(demo, "--configfile", "config/demo.yaml")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_the_demos_latex_tables_compile_and_fit_a_page(demo, tmp_path):
    tables = demo / "results" / "tables"
    assert_fits_the_page(compile_tables(tables / "main.tex", tables / "paper_comparison.tex", folder=tmp_path))


def test_the_end_of_a_run_shows_the_results_and_where_they_are(demo):
    console = (demo / "console.txt").read_text()
    end = console[console.index("dp-medbench: done.") :]
    assert (
        "results/summary.csv" in end and "snakemake --report results/report.html --configfile config/demo.yaml" in end
    )
    summary = pd.read_csv(demo / "results" / "summary.csv")
    baseline = summary[(summary["dataset"] == "chest_xray") & (summary["mechanism"] == "none")]
    assert f"{100 * baseline['test_acc'].mean():.1f} %" in end  # the headline table, from summary.csv
    assert "DP-SGD" in end and "Local-DP" in end


FIGURES = (
    "figure3_learning_curves",
    "figure4_accuracy",
    "privacy_utility",
    "audit_auc",
    "audit_epsilon",
    "ldp_reidentification",
)


def check_ldp(workdir: Path, dataset: str, mechanism: str, dtype: type, shape: tuple[int, ...]) -> None:
    for beta in ("1", "2", "4"):
        folder = workdir / "data" / "ldp" / dataset / mechanism / f"beta{beta}"
        privacy = json.loads((folder / "privacy.json").read_text())
        assert privacy["mechanism"] == mechanism and privacy["beta"] == float(beta)
        if mechanism == "laplace_pixel":
            assert privacy["epsilon_per_value"] == 1 / float(beta)
            assert privacy["epsilon_per_image"] == int(np.prod(shape)) / float(beta)
            assert privacy["epsilon_m_pixels"] == 16 * shape[-1] / float(beta)
        elif mechanism == "dp_pix":
            assert privacy["epsilon"] == privacy["epsilon_m_pixels"] == 1 / float(beta) and privacy["block"] == 16
            noisy = np.load(folder / "train.npy").astype(np.float32)
            assert (noisy == np.repeat(np.repeat(noisy[:, ::16, ::16], 16, axis=1), 16, axis=2)).all()
        else:
            assert privacy["epsilon_per_value"] is None and privacy["epsilon_reason"]
        for split in ("train", "val"):
            noisy = np.load(folder / f"{split}.npy", mmap_mode="r")
            clean = np.load(workdir / "data" / "prepared" / dataset / f"{split}.npy", mmap_mode="r")
            assert noisy.dtype == dtype and noisy.shape == clean.shape and noisy.shape[1:] == shape
            assert privacy["splits"][split]["images"] == len(clean)
        assert not (folder / "test.npy").exists()


def _jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts per rule from a dry run's summary table."""
    text = proc.stdout + proc.stderr
    counts, in_table = {}, False
    for line in text.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table and len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
        elif in_table and parts and parts[0] == "total":
            break
    return counts


def _wildcards(proc: subprocess.CompletedProcess) -> set[str]:
    return {line.split(":", 1)[1].strip() for line in proc.stdout.splitlines() if line.strip().startswith("wildcards:")}


def _demo_config(demo: Path) -> dict:
    return yaml.safe_load((demo / "config" / "demo.yaml").read_text())


def test_a_split_setting_reruns_only_that_dataset(demo):
    config = _demo_config(demo)
    config["datasets"]["aptos"]["val_fraction"] = 0.2
    dry = snakemake(demo, "-n", config=config)
    assert _jobs(dry) == {
        "all": 1,
        "configuration": 1,
        "prepare": 1,
        "ldp_copy": 6,
        "ldp_attack": 6,
        "figure2": 1,
        "train": 10,
        "evaluate": 10,
        "summary": 1,
        "report_landing": 1,
        "tables": 1,
        "figures": 1,
        "data_table": 1,  # the prepared data's info.json changed
    }
    assert {w.split(",")[0] for w in _wildcards(dry) if w.startswith("dataset=")} == {"dataset=aptos"}
    config["image_size"] = 64  # touches both datasets, but no download (DP-Pix's 16 px cells still divide it)
    assert _jobs(snakemake(demo, "-n", config=config)) == {
        "all": 1,
        "configuration": 1,
        "prepare": 2,
        "ldp_copy": 12,
        "ldp_attack": 12,
        "figure2": 2,
        "train": 20,
        "evaluate": 20,
        "summary": 1,
        "report_landing": 1,
        "tables": 1,
        "figures": 1,
        "data_table": 1,
    }


def test_adding_a_beta_or_a_seed_schedules_only_new_cells(demo):
    config = _demo_config(demo)
    config["betas"] = [1, 2, 4, 8]
    dry = snakemake(demo, "-n", config=config)
    assert _jobs(dry) == {
        "all": 1,
        "configuration": 1,
        "ldp_copy": 4,
        "ldp_attack": 4,
        "figure2": 2,
        "train": 6,
        "evaluate": 6,
        "summary": 1,
        "report_landing": 1,
        "tables": 1,
        "figures": 1,
    }
    trained = {w for w in _wildcards(dry) if "mechanism" in w}
    assert all("beta=8" in w for w in trained) and len(trained) == 6
    config["betas"] = [1, 2, 4]
    config["seeds"] = [0, 1]
    dry = snakemake(demo, "-n", config=config)
    assert _jobs(dry) == {
        "all": 1,
        "configuration": 1,
        "train": 20,
        "evaluate": 20,
        "summary": 1,
        "report_landing": 1,
        "tables": 1,
        "figures": 1,
    }
    assert all("seed=1" in w for w in _wildcards(dry))


def test_training_settings_rerun_only_the_cells_they_touch(demo):
    config = _demo_config(demo)
    config["datasets"]["chest_xray"]["train"]["lr"] = 0.02
    dry = snakemake(demo, "-n", config=config)
    assert _jobs(dry) == {
        "all": 1,
        "configuration": 1,
        "train": 10,
        "evaluate": 10,
        "summary": 1,
        "report_landing": 1,
        "tables": 1,
        "figures": 1,
    }
    assert all("dataset=chest_xray" in w for w in _wildcards(dry))
    config = _demo_config(demo)
    config["dpsgd"]["max_grad_norm"] = 2.0  # DP-SGD cells only
    assert _jobs(snakemake(demo, "-n", config=config)) == {
        "all": 1,
        "configuration": 1,
        "train": 6,
        "evaluate": 6,
        "summary": 1,
        "report_landing": 1,
        "tables": 1,
        "figures": 1,
    }
    config = _demo_config(demo)
    config["datasets"]["chest_xray"]["ldp"]["clip"] = True  # that dataset's copies (both mechanisms), their cells
    assert _jobs(snakemake(demo, "-n", config=config)) == {
        "all": 1,
        "configuration": 1,
        "ldp_copy": 6,
        "ldp_attack": 6,
        "figure2": 1,
        "train": 6,
        "evaluate": 6,
        "summary": 1,
        "report_landing": 1,
        "tables": 1,
        "figures": 1,
    }
    one_mechanism = {
        "all": 1,
        "configuration": 1,
        "ldp_copy": 3,
        "ldp_attack": 3,
        "figure2": 1,
        "train": 3,
        "evaluate": 3,
        "summary": 1,
        "report_landing": 1,
        "tables": 1,
        "figures": 1,
    }
    config = _demo_config(demo)
    config["datasets"]["aptos"]["ldp"]["block"] = 8  # DP-Pix's cells: the APTOS DP-Pix copies and cells only
    dry = snakemake(demo, "-n", config=config)
    assert _jobs(dry) == one_mechanism
    assert {w.split(", beta")[0] for w in _wildcards(dry) if "mechanism" in w} == {
        "dataset=aptos, mechanism=ldp-dp_pix"
    }
    config = _demo_config(demo)
    config["datasets"]["chest_xray"]["ldp"]["mechanism"].append("laplace_image_shift")  # a third mechanism
    dry = snakemake(demo, "-n", config=config)
    assert _jobs(dry) == one_mechanism
    assert all("laplace_image_shift" in w for w in _wildcards(dry) if w.startswith("dataset=chest_xray, "))
    config["datasets"]["chest_xray"]["ldp"]["mechanism"].reverse()  # the order in the file changes nothing
    assert _jobs(snakemake(demo, "-n", config=config)) == one_mechanism
    config = _demo_config(demo)
    config.setdefault("ldp", {})["figure_index"] = 2  # a plotting option: no training
    assert _jobs(snakemake(demo, "-n", config=config)) == {"all": 1, "configuration": 1, "figure2": 2}
    config = _demo_config(demo)
    config["plots"] = {"dpi": 100}  # another plotting option: the result figures only
    assert _jobs(snakemake(demo, "-n", config=config)) == {"all": 1, "configuration": 1, "figures": 1}


def test_speed_only_settings_rerun_nothing(demo):
    """Settings that change only speed, memory or where a job runs (settings.SPEED_ONLY) are not params."""
    from dpmedbench.core.settings import SPEED_ONLY

    changes = {
        ("", "device"): "cpu",
        ("model", "eval_batch"): 3,
        ("model", "channels_last"): True,
        ("dpsgd", "max_physical_batch"): 2,
        ("ldp", "chunk_images"): 5,
    }
    assert set(changes) == set(SPEED_ONLY)
    config = _demo_config(demo)
    for (section, key), value in changes.items():
        (config.setdefault(section, {}) if section else config)[key] = value
    dry = snakemake(demo, "-n", config=config)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]
    config = _demo_config(demo)
    config.setdefault("model", {})["max_physical_batch"] = 2  # BatchNorm statistics: the BatchNorm cells rerun
    assert _jobs(snakemake(demo, "-n", config=config)) == {
        "all": 1,
        "configuration": 1,
        "train": 14,
        "evaluate": 14,
        "summary": 1,
        "report_landing": 1,
        "tables": 1,
        "figures": 1,
    }


def test_bf16_precision_reruns_every_cell_and_is_refused_beside_opacus_modes(demo):
    """bf16 autocast changes the numbers, so it is a result setting: every cell retrains (and is re-evaluated).
    The demo's chest X-ray DP-SGD cells clip per patient with 'ew', which bf16 is refused beside."""
    every = _jobs(snakemake(demo, "-n", "--forceall", config=_demo_config(demo)))
    config = _demo_config(demo)
    config.setdefault("model", {})["precision"] = "bf16"
    refused = snakemake(demo, "-n", config=config, check=False)
    assert refused.returncode != 0
    assert "model.precision: 'bf16' with datasets.chest_xray.dpsgd.grad_sample_mode" in refused.stdout + refused.stderr
    config["datasets"]["chest_xray"].pop("dpsgd")  # image-level 'bk': bf16 allowed
    jobs = _jobs(snakemake(demo, "-n", config=config))
    assert jobs["train"] == every["train"] and jobs["evaluate"] == every["evaluate"]
    assert "prepare" not in jobs and "ldp_copy" not in jobs


def test_the_calibrated_audit_adds_reference_models_and_retrains_no_cell(demo):
    config = _demo_config(demo)
    config["evaluation"] = {"reference_models": 2}
    dry = snakemake(demo, "-n", config=config)
    assert _jobs(dry) == {
        "all": 1,
        "configuration": 1,
        "reference": 40,
        "evaluate": 20,
        "summary": 1,
        "report_landing": 1,
        "tables": 1,
        "figures": 1,
    }
    assert {w for w in _wildcards(dry) if "ref=" in w} >= {
        "dataset=aptos, mechanism=dpsgd, beta=4, ref=1",
        "dataset=chest_xray, mechanism=none, beta=0, ref=0",
    }


def test_calibrated_audit_end_to_end(workdir):
    config = yaml.safe_load((workdir / "config" / "demo.yaml").read_text())
    config.update(mechanisms=["none"], seeds=[0], evaluation={"reference_models": 2})
    config["datasets"]["aptos"]["enabled"] = False
    config["datasets"]["chest_xray"]["train"]["epochs"] = 3
    snakemake(workdir, config=config)
    refs = sorted(workdir.glob("results/references/chest_xray/none/beta0/ref*/members.npy"))
    assert len(refs) == 2
    masks = [np.load(r) for r in refs]
    assert all(m.sum() == len(m) // 2 for m in masks) and (masks[0] != masks[1]).any()
    ref_metrics = json.loads((refs[0].parent / "metrics.json").read_text())
    assert ref_metrics["n_train"] == len(masks[0]) // 2 and ref_metrics["cell"]["seed"] == 1_000_000
    evaluation = json.loads((workdir / "results/cells/chest_xray/none/beta0/seed0/evaluation.json").read_text())
    lira = evaluation["audit"]["lira"]
    assert lira["reference_models"] == 2 and lira["n_members"] > 0 and 0 <= lira["auc"] <= 1
    summary = pd.read_csv(workdir / "results" / "summary.csv")
    assert summary.loc[0, "audit_lira_auc"] == pytest.approx(lira["auc"])
    assert "LiRA AUC" in (workdir / "results" / "tables" / "main.md").read_text()


#: What reruns after any evaluation: the summary, what is built from it, and the report's landing page.
SUMMARY_ON = {"summary": 1, "tables": 1, "figures": 1, "report_landing": 1}


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        # Training code: every training cell, and everything downstream of the cells.
        ("training/cell.py", {"all": 1, "train": 20, "evaluate": 20, **SUMMARY_ON}),
        ("training/loop.py", {"all": 1, "train": 20, "evaluate": 20, **SUMMARY_ON}),
        # DP-SGD code: the DP-SGD cells only (each cell's digest covers its own plan).
        ("training/dpsgd/step.py", {"all": 1, "train": 6, "evaluate": 6, **SUMMARY_ON}),
        ("training/dpsgd/bookkeeping.py", {"all": 1, "train": 6, "evaluate": 6, **SUMMARY_ON}),
        ("training/dpsgd/sampling.py", {"all": 1, "train": 6, "evaluate": 6, **SUMMARY_ON}),
        # Table code: the tables only; figure code: the figures only.
        ("results/formats.py", {"all": 1, "tables": 1, "data_table": 1}),
        ("results/figures.py", {"all": 1, "figures": 1}),
        # Figure 2's code: Figure 2 only.
        ("ldp/figure2.py", {"all": 1, "figure2": 2}),
        # The evaluation metrics and audits: every evaluation and the aggregates, no training.
        ("results/metrics.py", {"all": 1, "evaluate": 20, **SUMMARY_ON}),
        ("results/stats.py", {"all": 1, "evaluate": 20, **SUMMARY_ON}),
        # The report's own pages: the landing page and the configuration page.
        ("results/report.py", {"all": 1, "configuration": 1, "report_landing": 1}),
    ],
)
def test_editing_the_code_reruns_exactly_what_it_computes(demo, module, expected):
    """Snakemake only sees a script's own mtime; the package's code digests in params carry edits of the
    modules a rule imports (workflow/rules/common.smk)."""
    path = demo / "workflow" / "scripts" / "dpmedbench" / module
    original = path.read_text()
    try:
        path.write_text(original + "\n# an edit\n")
        assert _jobs(snakemake(demo, "-n", "--configfile", "config/demo.yaml")) == expected
    finally:
        path.write_text(original)
    assert _jobs(snakemake(demo, "-n", "--configfile", "config/demo.yaml")) == {}


def test_real_layouts_from_local_zip_and_folder(workdir, tmp_path):
    chest = synth.make_chest_archive(tmp_path / "ChestXRay2017.zip", layout="mendeley", patients_per_class=6, seed=3)
    aptos = synth.make_aptos_archive(tmp_path / "aptos.zip", images_per_grade=6, seed=4)
    aptos_dir = extract(aptos, tmp_path / "aptos2019-blindness-detection")
    config = {
        "image_size": 32,
        "model": {"crop": 28},
        "resize_mode": "pad",
        "datasets": {
            "chest_xray": {"source": "local", "archive": str(chest)},
            "aptos": {"source": "local", "archive": str(aptos_dir)},
        },
    }
    snakemake(workdir, *data_targets("chest_xray", "aptos"), config=config)
    info = check_prepared(workdir, "chest_xray", 32, 1)
    assert (workdir / info["source"]["path"]).resolve() == chest.resolve() and info["resize_mode"] == "pad"
    info = check_prepared(workdir, "aptos", 32, 3)
    assert info["source"]["sha256_of"].startswith("folder listing")


def test_medmnist_npz_as_a_local_file(workdir, tmp_path):
    npz = synth.make_medmnist_npz(tmp_path / "pneumoniamnist_64.npz", dataset="chest_xray", n=(10, 4, 4), side=64)
    config = {
        "image_size": 32,
        "model": {"crop": 28},
        "datasets": {"chest_xray": {"source": "local", "archive": str(npz)}, "aptos": {"enabled": False}},
    }
    snakemake(workdir, *data_targets("chest_xray"), config=config)
    info = check_prepared(workdir, "chest_xray", 32, 1)
    assert info["split"] == {"official": True} and not (workdir / "data" / "prepared" / "aptos").exists()


COPY = "data/ldp/chest_xray/laplace_pixel/beta1"


def _one_copy_config() -> dict:
    """The demo's chest X-rays and one per-pixel copy only (no training): what the key tests need."""
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config.update(betas=[1], mechanisms=["ldp"])
    config["datasets"]["aptos"]["enabled"] = False
    config["datasets"]["chest_xray"]["ldp"]["mechanism"] = "laplace_pixel"
    return config


def test_the_noise_key_makes_each_checkout_s_noise_its_own(tmp_path):
    """With the default keyed noise, two fresh checkouts of the same configuration draw different noise; in one
    checkout a deleted copy is rebuilt byte for byte. The key is created once by the Snakemake process, with mode
    0600 in a 0700 folder, and no file the run writes holds it; a new key reruns the copy."""
    copies, keys = [], []
    for name in ("one", "two"):
        workdir = clone(tmp_path / name)
        snakemake(workdir, f"{COPY}/train.npy", config=_one_copy_config())
        key_file = workdir / "data" / "secret" / "noise.key"
        assert (
            oct(key_file.stat().st_mode & 0o777) == "0o600" and oct(key_file.parent.stat().st_mode & 0o777) == "0o700"
        )
        keys.append(key_file.read_bytes())
        copies.append((workdir / COPY / "train.npy").read_bytes())
        record = json.loads((workdir / COPY / "privacy.json").read_text())
        assert record["noise_source"] == "keyed" and record["formal_guarantee"] and record["seed"] is None
        for path in workdir.rglob("*"):
            if path.is_file() and path != key_file:
                assert keys[-1] not in path.read_bytes(), path
    assert keys[0] != keys[1] and copies[0] != copies[1]
    (workdir / COPY / "train.npy").unlink()
    snakemake(workdir, f"{COPY}/train.npy", config=_one_copy_config())
    assert (workdir / COPY / "train.npy").read_bytes() == copies[1]
    key_file.unlink()  # a dry run makes no key, and plans the copy again: a new key will be new noise
    assert "ldp_copy" in snakemake(workdir, "-n", f"{COPY}/train.npy", config=_one_copy_config()).stdout
    assert not key_file.exists()
    snakemake(workdir, f"{COPY}/train.npy", config=_one_copy_config())
    assert key_file.read_bytes() != keys[1] and (workdir / COPY / "train.npy").read_bytes() != copies[1]


def test_a_job_without_the_key_fails_with_its_name_and_writes_nothing(tmp_path):
    """A copy job that finds no key (a node that does not share the key's file system) stops with a named error,
    in its log and on stderr, and leaves no output; it never makes a key of its own."""
    from dpmedbench.core.logs import run_logged
    from dpmedbench.core.noisekey import with_key
    from dpmedbench.ldp.copies import materialise_copy

    np.save(tmp_path / "train.npy", np.zeros((2, 16, 16, 1), np.uint8))
    log, missing = tmp_path / "job.log", tmp_path / "node" / "noise.key"
    with pytest.raises(SystemExit) as stop:
        run_logged(str(log), with_key(materialise_copy, missing, "0123456789abcdef"), dataset="chest_xray",
                   beta=1.0, mechanism="laplace_pixel", clip=False, seed=42, noise_source="keyed",
                   inputs={"train": tmp_path / "train.npy"}, outputs={"train": tmp_path / "out" / "train.npy"},
                   privacy_json=tmp_path / "out" / "privacy.json")  # fmt: skip
    assert stop.value.code == 1 and "the noise key is missing" in log.read_text()
    assert not (tmp_path / "out").exists() and not missing.exists()


def test_parsing_the_workflow_writes_no_landing_page(workdir):
    """The report's landing page is the report_landing rule's output: a dry run, which parses the Snakefile as
    every job does, writes none (and the rule is in the plan, after the summary)."""
    proc = snakemake(workdir, "-n", "--configfile", "config/demo.yaml")
    assert "report_landing" in proc.stdout
    assert not list(workdir.rglob("*landing*.rst")) and not (workdir / "data" / "secret").exists()  # nor a key


def test_bad_config_stops_before_any_job(workdir):
    proc = snakemake(workdir, "-n", config={"datasets": {"aptos": {"val_fracton": 0.1}}}, check=False)
    assert proc.returncode != 0
    assert "datasets.aptos: Additional properties are not allowed ('val_fracton' was unexpected)" in proc.stderr


def test_a_non_finite_setting_stops_the_run_before_any_job(workdir):
    """`lr: .nan` passed the schema (NaN satisfies every minimum) and "trained" a cell to a recorded 50 %."""
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["datasets"]["chest_xray"]["train"]["lr"] = float("nan")
    proc = snakemake(workdir, "-n", config=config, check=False)
    assert proc.returncode != 0 and "datasets.chest_xray.train.lr: nan is not a finite number" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_corrupt_image_fails_with_its_name_and_no_output(workdir, tmp_path):
    aptos = synth.make_aptos_archive(tmp_path / "aptos.zip", images_per_grade=6, seed=4)
    with zipfile.ZipFile(aptos) as zf:
        victim = sorted(n for n in zf.namelist() if n.startswith("train_images/"))[3]
    bad = rewrite_zip(aptos, tmp_path / "broken.zip", {victim: b"\x89PNG\r\n\x1a\n truncated"})
    config = {
        "image_size": 32,
        "model": {"crop": 28},
        "datasets": {"aptos": {"source": "local", "archive": str(bad)}, "chest_xray": {"enabled": False}},
    }
    proc = snakemake(workdir, *data_targets("aptos"), config=config, check=False)
    assert proc.returncode != 0
    log = (workdir / "logs" / "prepare" / "aptos.log").read_text()
    assert f"broken.zip:{victim}: cannot decode image" in log
    assert f"broken.zip:{victim}: cannot decode image" in proc.stderr
    prepared = workdir / "data" / "prepared" / "aptos"
    assert not prepared.exists() or list(prepared.iterdir()) == []


def test_missing_kaggle_credentials_fail_the_fetch_with_instructions(workdir, tmp_path):
    env_home = tmp_path / "home"
    env_home.mkdir()
    config = {
        "datasets": {"aptos": {"source": "kaggle"}, "chest_xray": {"enabled": False}},
        "model": {"pretrained": False},  # no weights download to fail first (no internet here)
    }
    (workdir / "test.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(env_home), KAGGLE_CONFIG_DIR=str(env_home / ".kaggle"))
    proc = subprocess.run(
        [*SNAKEMAKE, "--cores", "1", "--configfile", "test.yaml"],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "aptos: no Kaggle credentials found" in proc.stderr
    # the last thing on the screen is what failed and what to do, with its log
    end = proc.stdout[proc.stdout.index("dp-medbench: the run failed.") :]
    assert "aptos: no Kaggle credentials found" in end and "KAGGLE_API_TOKEN" in end and "logs/fetch/aptos.log" in end
    assert not (workdir / "data" / "raw" / "aptos" / "source.json").exists()


def test_lint_is_clean(workdir):
    proc = snakemake(workdir, "--lint", "--configfile", "config/demo.yaml", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


# Clicks a link by its text in the report's single-page app, then lets React re-render.
_CLICK = """(async (text) => {
  const link = [...document.querySelectorAll('a')].find(a => a.innerText.trim() === text);
  if (!link) return false;
  link.click();
  await new Promise(r => setTimeout(r, 300));
  return true;
})"""
# Shows one result (the eye icon of its row) and returns the size of the PNG the page then displays.
_SHOW = """(async (path) => {
  const row = [...document.querySelectorAll('tr')].find(tr => tr.innerText.trim() === path);
  if (!row) return null;
  row.querySelector('a').click();
  await new Promise(r => setTimeout(r, 300));
  const img = [...document.querySelectorAll('img')].find(i => i.src.startsWith('data:image/png'));
  if (!img) return null;
  await img.decode();
  return [img.naturalWidth, img.naturalHeight, Math.round(img.getBoundingClientRect().width)];
})"""
# Every result embedded in the report: its caption, labels and, for a PNG, its decoded size.
_RESULTS = """(async () => {
  const out = {};
  for (const [path, r] of Object.entries(results)) {
    let size = null;
    if (r.mime_type === 'image/png') {
      const img = new Image();
      img.src = r.data_uri;
      await img.decode();
      size = [img.naturalWidth, img.naturalHeight];
    }
    out[path] = {caption: r.caption, labels: r.labels, mime: r.mime_type, size: size};
  }
  return {results: out, categories: Object.fromEntries(
    Object.entries(categories).map(([c, subs]) => [c, Object.keys(subs)]))};
})()"""


def test_the_report_shows_every_figure_and_table_in_chromium(demo, tmp_path):
    binary = chromium.executable()
    if binary is None:
        if os.environ.get("DPMEDBENCH_REQUIRE_CHROMIUM") == "1":
            pytest.fail("DPMEDBENCH_REQUIRE_CHROMIUM=1 but no chromium on PATH (Debian: apt-get install chromium)")
        pytest.skip("no Chromium here (Debian: apt-get install chromium)")
    snakemake(demo, "--report", "results/report.html", "--configfile", "config/demo.yaml")
    figures = list(FIGURES)
    cells = [c for c in (p.parent for p in demo.glob("results/cells/*/*/*/*/metrics.json"))]
    assert len(cells) == 20
    expected = {f"results/figures/{name}.png" for name in figures}
    expected |= {f"results/figures/figure2_{d}.png" for d in ("chest_xray", "aptos")}
    expected |= {"results/summary.csv", "results/tables/main.csv", "results/tables/paper_comparison.csv"}
    expected |= {"results/tables/data.csv", "results/configuration.html"}
    expected |= {f"results/tables/{t}.html" for t in ("main", "paper_comparison", "data")}  # shown as tables
    copies = {"chest_xray": ("laplace_pixel", "dp_pix"), "aptos": ("laplace_image_shift", "dp_pix")}
    expected |= {f"results/ldp/{d}/{m}/beta{b}/attack.json" for d in copies for m in copies[d] for b in (1, 2, 4)}
    expected |= {f"{c.relative_to(demo).as_posix()}/{f}" for c in cells for f in ("history.csv", "evaluation.json")}

    with chromium.Browser(binary) as browser:
        browser.open((demo / "results" / "report.html").as_uri())
        data = browser.evaluate(_RESULTS)
        assert set(data["results"]) == expected
        subcategories = {"Local-DP copies", "none", "ldp-dp_pix", "dpsgd"}
        assert {c: set(s) for c, s in data["categories"].items()} == {
            "chest_xray": subcategories | {"ldp-laplace_pixel"},
            "aptos": subcategories | {"ldp-laplace_image_shift"},
            "Overview": {"Figures", "Tables"},
        }
        for path, result in data["results"].items():
            assert result["caption"] and "{{" not in result["caption"], f"{path}: no caption"
            if path.endswith(".png"):
                assert result["size"][0] > 300 and result["size"][1] > 200, (path, result["size"])
        assert data["results"]["results/cells/aptos/dpsgd/beta2/seed0/history.csv"]["labels"] == {
            "cell": "β 2, seed 0",
            "result": "learning curve",
        }
        # Through the page itself, as a reader would: Overview > Figures, then each figure.
        page = (demo / "results" / "report.html").read_text()
        assert "Main results of this run" in page and "audit" in page  # the landing page's headline table
        assert browser.evaluate(f"{_CLICK}('Overview')") and browser.evaluate(f"{_CLICK}('Figures')")
        for name in figures:
            shown = browser.evaluate(f"{_SHOW}('results/figures/{name}.png')")
            assert shown and shown[0] > 300 and shown[2] > 200, (name, shown)
        browser.screenshot(tmp_path / "report.png")


def _local_chest(tmp_path: Path, name: str = "chest.zip", seed: int = 3) -> Path:
    return synth.make_chest_archive(tmp_path / name, layout="mendeley", patients_per_class=4, seed=seed)


def test_a_missing_local_archive_stops_the_run_whatever_exists(demo, tmp_path):
    """The demo's data exist; naming a local archive that does not exist must not keep them ('~' expanded)."""
    config = _demo_config(demo)
    config["datasets"]["chest_xray"].update(source="local", archive="~/no-such-dir-dpmedbench/chest.zip")
    proc = snakemake(demo, "-n", config=config, check=False)
    assert proc.returncode != 0
    expected = f"datasets.chest_xray.archive: {Path.home()}/no-such-dir-dpmedbench/chest.zip does not exist"
    assert expected in proc.stderr and "Using '~'" not in proc.stderr
    config["datasets"]["chest_xray"].update(source="demo", archive=str(tmp_path / "x.zip"))
    proc = snakemake(demo, "-n", config=config, check=False)
    assert proc.returncode != 0 and "source is 'demo', which ignores it" in proc.stderr


def test_a_changed_local_archive_reruns_the_data_stage_whatever_its_mtime(workdir, tmp_path):
    zipped = _local_chest(tmp_path)
    folder = extract(_local_chest(tmp_path / "f", seed=5), tmp_path / "chest-folder")
    target = "data/raw/chest_xray/source.json"
    for archive in (zipped, folder):
        config = {"image_size": 32, "model": {"crop": 28}, "datasets": {"chest_xray": {"source": "local"}}}
        config["datasets"]["chest_xray"]["archive"] = str(archive)
        config["datasets"]["aptos"] = {"enabled": False}
        snakemake(workdir, target, config=config)
        assert "Nothing to be done" in "".join(snakemake(workdir, "-n", target, config=config).stdout.splitlines()[-3:])
        if archive.is_dir():  # edit one image, keep its mtime
            image = sorted(archive.rglob("*.jpeg"))[0]
            stat = image.stat()
            image.write_bytes(image.read_bytes()[:-10] + b"0123456789")
            os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        else:  # replace the zip by another one with an older mtime, as cp -p or mv would
            other = _local_chest(tmp_path / "o", seed=9)
            shutil.copyfile(other, archive)
            os.utime(archive, (1_000_000_000, 1_000_000_000))
        dry = snakemake(workdir, "-n", target, config=config)
        assert _jobs(dry).get("fetch") == 1, dry.stdout[-2000:]
        snakemake(workdir, target, config=config)
        assert json.loads((workdir / target).read_text())["sha256"] == (source_digest(archive)["sha256"])


def test_betas_get_exact_labels_and_unconfigured_targets_are_refused(demo):
    config = _demo_config(demo)
    config["betas"] = [1, 1.0000001]
    dry = snakemake(demo, "-n", config=config)
    betas = {part for w in _wildcards(dry) for part in w.split(", ") if part.startswith("beta=")}
    assert betas == {"beta=1.0000001"}  # beta 1 exists already; the new beta is a cell of its own, not rounded
    jobs = _jobs(dry)
    assert jobs["ldp_copy"] == 4 and jobs["train"] == 6  # per dataset: two copies, two ldp and a dpsgd cell
    for path, message in (
        ("results/cells/chest_xray/dpsgd/beta3/seed0/metrics.json", "beta3 is not a configured dpsgd cell"),
        ("results/cells/chest_xray/ldp-dp_pix/beta0/seed0/metrics.json", "beta0 is not a configured ldp-dp_pix cell"),
        ("data/ldp/aptos/dp_pix/beta1.23457/privacy.json", "beta1.23457 is not a configured ldp-dp_pix cell"),
        (
            "results/cells/chest_xray/ldp-laplace_image_shift/beta1/seed0/metrics.json",
            "laplace_image_shift is not a Local-DP mechanism of chest_xray",
        ),
        ("data/ldp/aptos/laplace_pixel/beta1/privacy.json", "laplace_pixel is not a Local-DP mechanism of aptos"),
    ):
        proc = snakemake(demo, "-n", path, "--configfile", "config/demo.yaml", check=False)
        assert proc.returncode != 0 and message in proc.stdout + proc.stderr, (path, proc.stderr[-2000:])


def test_every_cell_and_the_report_say_which_data_they_came_from(demo):
    summary = pd.read_csv(demo / "results" / "summary.csv")
    assert (summary["data_source"] == "demo").all() and summary["data_synthetic"].all()
    assert summary["data_sha256"].str.fullmatch("[0-9a-f]{64}").all()
    metrics = json.loads((demo / "results/cells/chest_xray/none/beta0/seed0/metrics.json").read_text())
    assert (
        metrics["data"]["description"].startswith("synthetic demo images")
        and "not real data" in (metrics["data"]["description"])
    )
    table = (demo / "results" / "tables" / "data.md").read_text()
    assert "synthetic demo images" in table and "Kermany 2018 paediatric" not in table


def test_every_json_the_demo_writes_is_strict_json(demo):
    """No NaN or Infinity literal anywhere (an undefined figure is null; an unbounded epsilon is null with its
    reason), by a parser that refuses them."""
    found = [p for folder in ("data", "results") for p in (demo / folder).rglob("*.json")]
    assert len(found) > 60
    for path in found:
        json.loads(path.read_text(), parse_constant=lambda c, path=path: pytest.fail(f"{path}: {c}"))


def test_every_local_dp_cell_lists_its_clean_data_outputs(demo):
    """What a Local-DP cell publishes from clean private images is marked outside its guarantee, in its record,
    its evaluation and the summary."""
    summary = pd.read_csv(demo / "results" / "summary.csv")
    ldp = summary[summary["mechanism"].str.startswith("ldp-")]
    assert len(ldp) and ldp["outside_guarantee"].str.contains("val_clean").all()
    assert ldp["outside_guarantee"].str.contains("clean_members").all()
    for cell in (demo / "results" / "cells").glob("*/ldp-*/*/*"):
        record = json.loads((cell / "metrics.json").read_text())["privacy"]
        assert {"val_clean", "clean_members", "copy_quality", "ldp_attack", "figure2_clean"} <= set(
            record["outside_guarantee"]
        )
        assert "val_clean" in json.loads((cell / "evaluation.json").read_text())["outside_guarantee"]


def test_audits_speak_in_epsilon_for_every_cell_and_copy(demo):
    """Every cell carries its membership audit's epsilon estimate with the ceiling (an estimate: no column calls
    it a bound); the demo's APTOS DP-SGD cells ran the one-run canary audit, the one lower bound; every Local-DP
    copy was attacked, and its LDP cells carry the figures."""
    summary = pd.read_csv(demo / "results" / "summary.csv")
    assert summary["audit_epsilon_estimate"].notna().all() and (summary["audit_epsilon_estimate"] >= 0).all()
    assert (summary["audit_epsilon_estimate"] <= summary["audit_epsilon_estimate_ceiling"] + 1e-9).all()
    assert [c for c in summary.columns if c.endswith("_lb")] == ["audit_canary_epsilon_lb"]
    canaries = summary[(summary["dataset"] == "aptos") & (summary["mechanism"] == "dpsgd")]
    assert (canaries["audit_canaries"] == 20).all() and (canaries["audit_canary_guesses"] == 2).all()
    assert summary.loc[summary["dataset"] == "chest_xray", "audit_canaries"].isna().all()
    metrics = json.loads((demo / "results/cells/aptos/dpsgd/beta1/seed0/metrics.json").read_text())
    assert metrics["canaries"]["m"] == 20 and metrics["n_train"] < 60
    ldp = summary["mechanism"].str.startswith("ldp-")
    assert summary.loc[ldp, "ldp_reid_top1"].between(0, 1).all() and summary.loc[~ldp, "ldp_reid_top1"].isna().all()
    assert (summary.loc[ldp, "ldp_reid_chance_top1"] < 0.05).all()
    assert set(summary.loc[ldp, "privacy_mechanism"]) == {"laplace_pixel", "laplace_image_shift", "dp_pix"}
    assert (summary.loc[ldp, "mechanism"] == "ldp-" + summary.loc[ldp, "privacy_mechanism"]).all()
    for dataset, mechanisms in (
        ("chest_xray", ("laplace_pixel", "dp_pix")),
        ("aptos", ("laplace_image_shift", "dp_pix")),
    ):
        for mechanism in mechanisms:
            for beta in (1, 2, 4):
                attack = json.loads((demo / f"results/ldp/{dataset}/{mechanism}/beta{beta}/attack.json").read_text())
                assert (
                    attack["splits"]["train"]["reidentification"]["gallery"] > 20 and attack["mechanism"] == mechanism
                )
                row = summary[(summary["mechanism"] == f"ldp-{mechanism}") & (summary["dataset"] == dataset)
                              & (summary["beta"] == beta)]  # fmt: skip
                assert row["ldp_reid_top1"].item() == attack["splits"]["train"]["reidentification"]["top1"]
    assert "ε lower bound" in (demo / "results" / "tables" / "main.md").read_text()
