# Configuration loading and validation, input functions and helpers shared by every rule file.
import os
import sys
import time
from pathlib import Path

STARTED = (
    time.time()
)  # logs written after this belong to this run (the onerror handler reads them)

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

# Light modules only (standard library, jsonschema, yaml): this runs whenever Snakemake builds the job graph.
from dpmedbench.core.config import (  # noqa: E402
    canaries_of,
    canonical,
    uses_noise_key,
    check_local_archives,
    dpsgd_settings,
    enabled_datasets,
    ldp_copy_settings,
    ldp_mechanisms,
    validate_config,
)
from dpmedbench.core.console import on_error, on_success  # noqa: E402
from dpmedbench.core.digest import (
    code_digest,
    script_digest,
    script_modules,
)  # noqa: E402
from dpmedbench.core.errors import ConfigError  # noqa: E402
from dpmedbench.core.fileio import cached_source_digest  # noqa: E402
from dpmedbench.core.noisekey import (
    NoiseKeyError,
    create_key,
    key_id,
    load_key,
)  # noqa: E402
from dpmedbench.core.gpumem import gpu_memory_mb  # noqa: E402
from dpmedbench.core.names import (  # noqa: E402
    CELL_DIR,
    LDP_MECHANISMS,
    MECHANISMS,
    PLAN_MODULES,
    REFERENCE_DIR,
    SPLITS,
    beta_label,
    family,
    ldp_cell_mechanism,
    ldp_mechanism,
)
from dpmedbench.core.settings import SPEED_ONLY  # noqa: E402
from dpmedbench.data.weights import RESNET18_URL  # noqa: E402

try:
    validate_config(config)
    check_local_archives(config)
except ConfigError as exc:
    sys.exit(f"dp-medbench: {exc}")

DATASETS = enabled_datasets(config)
# The secret noise key of keyed noise (noise_source 'keyed'): created here, by the Snakemake process itself (never
# by a job, nor by a dry run), the first time the grid needs it; its id is a param of every job that draws keyed
# noise, so a new key reruns exactly those.
NOISE_KEY = os.path.expanduser(config["noise_key"])
if (
    uses_noise_key(config)
    and workflow.is_main_process
    and not workflow.output_settings.dryrun
    and create_key(NOISE_KEY)
):
    print(
        f"dp-medbench: created the secret noise key {NOISE_KEY} (mode 0600): keep it out of what you publish and "
        "back it up; without it the keyed copies and cells cannot be rebuilt byte for byte",
        file=sys.stderr,
    )
try:  # jobs that find no key fail with a named error (never a new key)
    NOISE_KEY_ID = (
        key_id(load_key(NOISE_KEY)) if os.path.exists(NOISE_KEY) else "no key yet"
    )
except NoiseKeyError as exc:
    sys.exit(f"dp-medbench: {exc}")
# The report's landing page: the one the report_landing rule wrote (the description and the main results of
# the run), or the bare description before a run has written it. Parsing the Snakefile writes nothing.
REPORT_TEMPLATE = "workflow/report/workflow.rst"
REPORT_LANDING_PAGE = "results/report_landing.rst"
REPORT_LANDING = os.path.abspath(
    REPORT_LANDING_PAGE if os.path.exists(REPORT_LANDING_PAGE) else REPORT_TEMPLATE
)
FETCH_KEYS = ("source", "archive", "sha256", "url", "medmnist_size", "demo")
PREPARE_KEYS = {
    "chest_xray": ("val_fraction", "official_val"),
    "aptos": ("val_fraction", "test_fraction"),
}
# Digests of the package code each rule's script runs (its imports, transitively): params, so editing a module
# reruns exactly the jobs that execute it.
SCRIPTS = Path(workflow.basedir) / "workflow" / "scripts"
FETCH_CODE = script_digest(SCRIPTS / "fetch.py")
PREPARE_CODE = script_digest(SCRIPTS / "prepare.py")
LDP_CODE = script_digest(SCRIPTS / "ldp.py")
LDP_ATTACK_CODE = script_digest(SCRIPTS / "ldp_attack.py")
FIGURE_CODE = script_digest(SCRIPTS / "figure2.py")
WEIGHTS_CODE = script_digest(SCRIPTS / "weights.py")
# A cell runs the training code and its own mechanism's plan (imported by name), so editing the DP-SGD code
# reruns the DP-SGD cells only.
TRAIN_CODE = {
    m: code_digest(*script_modules(SCRIPTS / "train.py"), PLAN_MODULES[m])
    for m in MECHANISMS
}
REFERENCE_CODE = {
    m: code_digest(*script_modules(SCRIPTS / "reference.py"), PLAN_MODULES[m])
    for m in MECHANISMS
}
EVALUATE_CODE = script_digest(SCRIPTS / "evaluate.py")
SUMMARY_CODE = script_digest(SCRIPTS / "summary.py")
TABLES_CODE = script_digest(SCRIPTS / "tables.py")
FIGURES_CODE = script_digest(SCRIPTS / "figures.py")
DATA_TABLE_CODE = script_digest(SCRIPTS / "datatable.py")
CONFIGURATION_CODE = script_digest(SCRIPTS / "configuration.py")
LANDING_CODE = script_digest(SCRIPTS / "landing.py")
# Settings that change only speed, memory or where a job runs reach the jobs as resources, not params, so
# changing them reruns nothing (SPEED_ONLY in dpmedbench/settings.py lists them).
DEVICE = config["device"]
EVAL_BATCH = config["model"]["eval_batch"]
CHANNELS_LAST = config["model"]["channels_last"]
DP_PHYSICAL_BATCH = config["dpsgd"]["max_physical_batch"]
LDP_CHUNK_IMAGES = config["ldp"]["chunk_images"]
# Reference models' training seeds: far from the cells' seeds, so no reference starts like a target.
REFERENCE_SEED_BASE = 1_000_000
BETA_LABELS = [beta_label(b) for b in config["betas"]]
WEIGHTS_URL = RESNET18_URL
WEIGHTS_DEFAULT = f"data/weights/{RESNET18_URL.rsplit('/', 1)[1]}"
# Threads, memory and runtime in the rules are defaults; profiles/ sets them per machine. A training or evaluation
# job asks for a GPU unless the config pins the CPU, so `--resources gpu=1` keeps two jobs off one GPU.
GPU_REQUEST = 0 if config["device"] == "cpu" else 1


def gpu_mem_mb(wildcards):
    """GPU memory (MiB) a training job asks for, so `--resources gpu_mem_mb=<card>` packs cells onto one card
    (dpmedbench/core/gpumem.py says where the figures come from); 0 when the config pins the CPU.
    """
    if not GPU_REQUEST:
        return 0
    kind = family(wildcards.mechanism)
    crop = config["model"]["crop"]
    if kind == "dpsgd":
        dp = dpsgd_settings(config, wildcards.dataset)
        return gpu_memory_mb(
            kind,
            crop=crop,
            chunk=dp["max_physical_batch"],
            grad_sample_mode=dp["grad_sample_mode"],
        )
    return gpu_memory_mb(kind, crop=crop, chunk=config["model"]["max_physical_batch"])


def gpu_mem_mb_evaluate(wildcards):
    """GPU memory (MiB) an evaluation job asks for (inference in batches of model.eval_batch)."""
    if not GPU_REQUEST:
        return 0
    return gpu_memory_mb("evaluate", crop=config["model"]["crop"], chunk=EVAL_BATCH)


wildcard_constraints:
    dataset="|".join(["chest_xray", "aptos"]),
    beta=r"[0-9]+(\.[0-9]+)?(e[-+]?[0-9]+)?",
    mechanism="none|dpsgd|" + "|".join(ldp_cell_mechanism(m) for m in LDP_MECHANISMS),
    ldp="|".join(LDP_MECHANISMS),
    seed=r"[0-9]+",
    ref=r"[0-9]+",


def fetch_settings(wildcards):
    """The part of datasets.<name> that decides which archive is used (and nothing else)."""
    ds = config["datasets"][wildcards.dataset]
    return canonical({key: ds[key] for key in FETCH_KEYS if key in ds})


def local_archive(wildcards):
    """With source 'local', the user's archive is an input, so replacing it reruns the data stage."""
    ds = config["datasets"][wildcards.dataset]
    return [ds["archive"]] if ds["source"] == "local" else []


# Digests of local archives, remembered by what identifies each cheaply (size, times, inode; per file for a
# folder): an unchanged archive is not read again, a changed one is hashed anew. Delete the file to re-hash all.
ARCHIVE_DIGESTS = ".snakemake/dpmedbench/archive-digests.json"


def local_archive_digest(wildcards):
    """The content digest of a local archive, as a param: a replaced or edited archive reruns the data stage
    whatever its modification time (Snakemake compares only those)."""
    ds = config["datasets"][wildcards.dataset]
    if ds["source"] != "local":
        return ""
    return cached_source_digest(ds["archive"], ARCHIVE_DIGESTS)["sha256"]


def checked_beta(wildcards):
    """The beta of a target, refused with a message unless it is one of the configured betas (or 0 for the
    'none' cell): a mistyped or rounded target must not quietly build a cell nobody configured.
    """
    mechanism = getattr(wildcards, "mechanism", None) or ldp_cell_mechanism(
        wildcards.ldp
    )
    variant = ldp_mechanism(mechanism)
    if variant and variant not in ldp_mechanisms(config, wildcards.dataset):
        raise ValueError(
            f"dp-medbench: {variant} is not a Local-DP mechanism of {wildcards.dataset}: "
            f"datasets.{wildcards.dataset}.ldp.mechanism lists "
            f"{', '.join(ldp_mechanisms(config, wildcards.dataset))}"
        )
    allowed = ["0"] if mechanism == "none" else BETA_LABELS
    if wildcards.beta not in allowed:
        raise ValueError(
            f"dp-medbench: beta{wildcards.beta} is not a configured {mechanism} cell: betas are "
            f"{', '.join(BETA_LABELS)} (paths use exactly these labels), and 'none' uses beta0"
        )
    return float(wildcards.beta)


def prepare_settings(wildcards):
    ds = config["datasets"][wildcards.dataset]
    return canonical({key: ds[key] for key in PREPARE_KEYS[wildcards.dataset]})


def ldp_settings(wildcards):
    """What decides one mechanism's copies of a dataset (that mechanism's keys only)."""
    checked_beta(wildcards)
    return canonical(ldp_copy_settings(config, wildcards.dataset, wildcards.ldp))


def ldp_copies():
    """(dataset, Local-DP mechanism, beta label) of every noisy copy of the grid (none without 'ldp')."""
    if "ldp" not in config["mechanisms"]:
        return []
    return [
        (dataset, name, beta)
        for dataset in DATASETS
        for name in ldp_mechanisms(config, dataset)
        for beta in BETA_LABELS
    ]


def copy_dir(dataset, name, beta):
    return f"data/ldp/{dataset}/{name}/beta{beta}"


def ldp_outputs():
    """Noisy copies, their privacy records and Figure 2, when 'ldp' is in the grid."""
    if "ldp" not in config["mechanisms"]:
        return []
    return [
        f"{copy_dir(*c)}/{file}"
        for c in ldp_copies()
        for file in ("train.npy", "val.npy", "privacy.json")
    ] + expand(
        "results/figures/figure2_{dataset}.{ext}", dataset=DATASETS, ext=("png", "pdf")
    )


def figure2_inputs(wildcards):
    """Every configured Local-DP copy of the dataset (all mechanisms, all betas) and their privacy records."""
    copies = [c for c in ldp_copies() if c[0] == wildcards.dataset]
    return {
        "copies": [f"{copy_dir(*c)}/train.npy" for c in copies],
        "privacy": [f"{copy_dir(*c)}/privacy.json" for c in copies],
    }


def grid_mechanisms(dataset):
    """The cell mechanisms of a dataset: 'none', one 'ldp-<mechanism>' per Local-DP mechanism, 'dpsgd'."""
    out = []
    for mechanism in config["mechanisms"]:
        if mechanism == "ldp":
            out += [ldp_cell_mechanism(m) for m in ldp_mechanisms(config, dataset)]
        else:
            out.append(mechanism)
    return out


def cells():
    """(dataset, mechanism, beta label, seed) of every cell of the grid; 'none' has beta 0."""
    out = []
    for dataset in DATASETS:
        for mechanism in grid_mechanisms(dataset):
            for beta in ["0"] if mechanism == "none" else BETA_LABELS:
                for seed in config["seeds"]:
                    out.append((dataset, mechanism, beta, seed))
    return out


def ldp_attack_outputs():
    """The attack record of every Local-DP copy of the grid (none without the 'ldp' mechanism)."""
    return [
        f"results/ldp/{d}/{name}/beta{b}/attack.json" for d, name, b in ldp_copies()
    ]


def cell_dir(dataset, mechanism, beta, seed):
    return CELL_DIR.format(dataset=dataset, mechanism=mechanism, beta=beta, seed=seed)


def copy_key(wildcards):
    """The noise key's id for a keyed Local-DP copy (a param: a new key rebuilds the copy), else empty."""
    return NOISE_KEY_ID if config["ldp"]["noise_source"] == "keyed" else ""


def cell_key(wildcards):
    """The noise key's id for a DP-SGD cell with keyed noise (its noise, Poisson masks, canaries), else empty."""
    if family(wildcards.mechanism) != "dpsgd":
        return ""
    keyed = dpsgd_settings(config, wildcards.dataset)["noise_source"] == "keyed"
    return NOISE_KEY_ID if keyed else ""


def train_code(wildcards):
    return TRAIN_CODE[family(wildcards.mechanism)]


def reference_code(wildcards):
    return REFERENCE_CODE[family(wildcards.mechanism)]


def cell_outputs():
    tables_and_figures = expand(
        "results/tables/{name}.{ext}",
        name=("main", "paper_comparison"),
        ext=("csv", "md", "tex", "html"),
    )
    tables_and_figures += expand(
        "results/figures/{name}.{ext}",
        name=(
            "figure3_learning_curves",
            "figure4_accuracy",
            "privacy_utility",
            "audit_auc",
            "audit_epsilon",
            "ldp_reidentification",
        ),
        ext=("png", "pdf"),
    )
    return [f"{cell_dir(*c)}/metrics.json" for c in cells()] + [
        "results/summary.csv",
        "results/tables/data.csv",
        "results/configuration.json",
        REPORT_LANDING_PAGE,
        *tables_and_figures,
    ]


def evaluate_inputs(wildcards):
    """best.pt and metrics.json of the cell, the clean test and train splits, and for 'ldp' the noisy copy."""
    cell = cell_dir(
        wildcards.dataset, wildcards.mechanism, wildcards.beta, wildcards.seed
    )
    prepared = f"data/prepared/{wildcards.dataset}"
    inputs = {
        "best": f"{cell}/best.pt",
        "metrics": f"{cell}/metrics.json",
        "test": f"{prepared}/test.npy",
        "test_csv": f"{prepared}/test.csv",
        "train_clean": f"{prepared}/train.npy",
        "train_clean_csv": f"{prepared}/train.csv",
    }
    refs = reference_dirs(wildcards.dataset, wildcards.mechanism, wildcards.beta)
    if refs:
        inputs["reference_models"] = [f"{r}/best.pt" for r in refs]
        inputs["reference_members"] = [f"{r}/members.npy" for r in refs]
    variant = ldp_mechanism(wildcards.mechanism)
    if variant:
        copy = copy_dir(wildcards.dataset, variant, wildcards.beta)
        inputs.update(
            train_seen=f"{copy}/train.npy",
            train_seen_csv=f"{prepared}/train.csv",
            val_noisy=f"{copy}/val.npy",
            val_noisy_csv=f"{prepared}/val.csv",
            val_clean=f"{prepared}/val.npy",
            val_clean_csv=f"{prepared}/val.csv",
            privacy=f"{copy}/privacy.json",
        )
    return inputs


def train_inputs(wildcards):
    """Clean arrays for 'none' and 'dpsgd'; the beta copy (and the clean val, for reference) for 'ldp'."""
    prepared = f"data/prepared/{wildcards.dataset}"
    inputs = {
        f"{split}_csv": f"{prepared}/{split}.csv" for split in ("train", "val", "test")
    }
    inputs["test"] = f"{prepared}/test.npy"
    variant = ldp_mechanism(wildcards.mechanism)
    if variant:
        copy = copy_dir(wildcards.dataset, variant, wildcards.beta)
        inputs.update(
            train=f"{copy}/train.npy",
            val=f"{copy}/val.npy",
            privacy=f"{copy}/privacy.json",
            val_clean=f"{prepared}/val.npy",
        )
    else:
        inputs.update(train=f"{prepared}/train.npy", val=f"{prepared}/val.npy")
    # Which data it is (metrics.json says so) and whether its groups are patients.
    inputs["info"] = f"{prepared}/info.json"
    if config["model"]["pretrained"]:
        inputs["weights"] = config["model"]["weights"] or WEIGHTS_DEFAULT
    return inputs


def reference_dirs(dataset, mechanism, beta):
    """Output folders of the reference models of one configuration (none unless evaluation.reference_models)."""
    return [
        REFERENCE_DIR.format(dataset=dataset, mechanism=mechanism, beta=beta, ref=k)
        for k in range(config["evaluation"]["reference_models"])
    ]


def train_settings(wildcards):
    """Everything a cell depends on, and nothing else: a config edit reruns exactly the cells it touches."""
    return cell_settings(wildcards, int(wildcards.seed))


def reference_settings(wildcards):
    """A reference model trains exactly like the cells of its configuration, with its own seed."""
    return cell_settings(wildcards, REFERENCE_SEED_BASE + int(wildcards.ref))


def result_configuration():
    """The configuration without its speed-only keys (SPEED_ONLY): what the results depend on."""
    out = {k: v for k, v in config.items() if ("", k) not in SPEED_ONLY}
    for section, key in SPEED_ONLY:
        if section:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return canonical(out)


def _result_keys(section, values=None):
    """A config section (or ``values`` of it) without its speed-only keys (SPEED_ONLY)."""
    speed = {key for sec, key in SPEED_ONLY if sec == section}
    return {k: v for k, v in (values or config[section]).items() if k not in speed}


def cell_settings(wildcards, seed):
    """What decides a cell's result; speed-only settings (SPEED_ONLY) are left out."""
    mechanism = wildcards.mechanism
    checked_beta(wildcards)
    model = {k: v for k, v in _result_keys("model").items() if k != "weights"}
    if (
        mechanism == "dpsgd"
    ):  # DP-SGD chunks by dpsgd.max_physical_batch, with no batch statistics
        model.pop("max_physical_batch", None)
    cell = {
        "dataset": wildcards.dataset,
        "mechanism": mechanism,
        "beta": float(wildcards.beta),
        "seed": seed,
        **config["datasets"][wildcards.dataset]["train"],
        **model,
    }
    if mechanism == "dpsgd":
        cell["dpsgd"] = _result_keys("dpsgd", dpsgd_settings(config, wildcards.dataset))
        if canaries_of(
            config, wildcards.dataset
        ):  # absent when off: cells without canaries keep their params
            cell["canaries"] = canaries_of(config, wildcards.dataset)
    return canonical(cell)


def prepared_outputs():
    return expand(
        "data/prepared/{dataset}/{split}.{ext}",
        dataset=DATASETS,
        split=SPLITS,
        ext=("npy", "csv"),
    ) + expand("data/prepared/{dataset}/info.json", dataset=DATASETS)


def result_figure(name, caption):
    """A result figure's PNG, flagged for the Snakemake report under Overview."""
    return report(
        f"results/figures/{name}.png",
        caption=f"../report/{caption}.rst",
        category="Overview",
        subcategory="Figures",
    )
