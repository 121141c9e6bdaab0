# Configuration loading and validation, input functions and helpers shared by every rule file.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from dpmedbench.config import canonical, enabled_datasets, validate_config  # noqa: E402
from dpmedbench.digest import code_digest  # noqa: E402
from dpmedbench.errors import ConfigError  # noqa: E402
from dpmedbench.ldp import beta_label  # noqa: E402
from dpmedbench.prepare import SPLITS  # noqa: E402

try:
    validate_config(config)
except ConfigError as exc:
    sys.exit(f"dp-medbench: {exc}")

DATASETS = enabled_datasets(config)
FETCH_KEYS = ("source", "archive", "sha256", "url", "medmnist_size", "demo")
PREPARE_KEYS = {
    "chest_xray": ("val_fraction", "official_val"),
    "aptos": ("val_fraction", "test_fraction"),
}
# The modules each stage runs: their digests are params, so editing one reruns exactly those jobs.
FETCH_CODE = code_digest("sources", "download", "synth", "medmnist", "fileio")
PREPARE_CODE = code_digest(
    "prepare", "archive", "layouts", "splits", "imaging", "medmnist", "fileio"
)
LDP_CODE = code_digest("ldp", "quality", "fileio")
FIGURE_CODE = code_digest("figures", "ldp", "quality", "fileio")
BETA_LABELS = [beta_label(b) for b in config["betas"]]


wildcard_constraints:
    dataset="|".join(["chest_xray", "aptos"]),
    beta=r"[0-9]+(\.[0-9]+)?(e[-+]?[0-9]+)?",


def fetch_settings(wildcards):
    """The part of datasets.<name> that decides which archive is used (and nothing else)."""
    ds = config["datasets"][wildcards.dataset]
    return canonical({key: ds[key] for key in FETCH_KEYS if key in ds})


def local_archive(wildcards):
    """With source 'local', the user's archive is an input, so replacing it reruns the data stage."""
    ds = config["datasets"][wildcards.dataset]
    return [ds["archive"]] if ds["source"] == "local" else []


def prepare_settings(wildcards):
    ds = config["datasets"][wildcards.dataset]
    return canonical({key: ds[key] for key in PREPARE_KEYS[wildcards.dataset]})


def ldp_settings(wildcards):
    return canonical(config["datasets"][wildcards.dataset]["ldp"])


def ldp_outputs():
    """Noisy copies, their privacy records and Figure 2, when 'ldp' is in the grid."""
    if "ldp" not in config["mechanisms"]:
        return []
    return expand(
        "data/ldp/{dataset}/beta{beta}/{file}",
        dataset=DATASETS,
        beta=BETA_LABELS,
        file=("train.npy", "val.npy", "privacy.json"),
    ) + expand(
        "results/figures/figure2_{dataset}.{ext}", dataset=DATASETS, ext=("png", "pdf")
    )


def prepared_outputs():
    return expand(
        "data/prepared/{dataset}/{split}.{ext}",
        dataset=DATASETS,
        split=SPLITS,
        ext=("npy", "csv"),
    ) + expand("data/prepared/{dataset}/info.json", dataset=DATASETS)
