"""Train one cell of the grid, (dataset, mechanism, beta, seed): load the splits, make the mechanism's plan,
build the model, resume if an interrupted run left its state, fit, and write the outputs.

Every random choice (initial weights, sampling, augmentation, DP noise) comes from a stream derived from the seed
and its purpose (:class:`dpmedbench.training.plans.Streams`), so an epoch replays identically after a restart.
After each epoch the full state is saved atomically to ``resume.pt`` beside the outputs; a rerun of a killed job
continues from there and ends with the same result as an uninterrupted run. The declared outputs
(``history.csv``, ``best.pt``, ``last.pt``, ``metrics.json``) are written only when training is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import TrainingError
from ..core.fileio import read_json
from ..core.names import data_provenance, family, groups_are_patients
from ..core.noisekey import key_id
from ..core.runtime import Interrupted, StopFlag, cpu_threads, derive_seed, pick_device, scheduler_record, versions
from ..core.settings import CellConfig, DPSettings
from ..core.tensors import Preprocess, Split, load_split, read_groups, read_labels
from .canaries import Canaries, choose_canaries
from .checkpoint import RunState, load_resume, save_resume, write_outputs
from .loop import fit
from .models import build_resnet18
from .plans import Plan, Streams, TrainingData, plan_for

__all__ = ["CellConfig", "DPSettings", "TrainingError", "run_cell", "run_reference", "train_cell"]
log = logging.getLogger(__name__)

Pair = tuple[str, str]  # (array .npy, manifest .csv)


def train_cell(
    config: CellConfig,
    *,
    train: Pair,
    val: Pair,
    test: Pair,
    out_dir: str | os.PathLike[str],
    val_clean: Pair | None = None,
    weights: str | os.PathLike[str] | None = None,
    ldp_privacy: str | os.PathLike[str] | None = None,
    data_info: str | os.PathLike[str] | None = None,
    fingerprint: str = "",
    threads: int = 1,
    train_subset: np.ndarray | None = None,
    reference: int | None = None,
    key: bytes | None = None,
) -> dict[str, Any]:
    """Train a cell and write ``history.csv``, ``best.pt``, ``last.pt`` and ``metrics.json`` into ``out_dir``.

    ``data_info``: the prepared data's ``info.json`` (where it came from: are its groups patients?).
    ``fingerprint`` identifies the settings and code: a ``resume.pt`` left by an interrupted run is used only if
    it carries the same one. ``train_subset``: indices of the training images to use, and ``reference`` the
    index, of a reference model of the calibrated audit (part of its random streams' identity). ``key``: the secret
    noise key, which keyed DP-SGD noise and canaries need (:mod:`dpmedbench.core.noisekey`).
    """
    out, device = _start(out_dir, threads=threads, device=config.device)
    splits = _load_splits(train, val, test, val_clean, device, train_subset)
    classes = _classes(splits, train[0], val[0])
    identity = (config.dataset, config.mechanism, config.beta, config.seed)
    streams = Streams(*identity, *(() if reference is None else ("reference", reference)), key=key)
    canaries = _canaries(config, splits, classes, streams, audited=reference is None and train_subset is None)
    data = _training_data(train[1], train_subset, ldp_privacy, data_info, dataset=config.dataset, canaries=canaries)
    plan = plan_for(config.mechanism)(config, data=data, streams=streams)
    log.info("%s", plan.describe())
    torch.manual_seed(streams.seed_for("init"))
    model = build_resnet18(num_classes=classes, weights=weights if config.pretrained else None, norm=plan.norm)
    model.to(device).train()
    if config.channels_last:  # speed only: another rounding, as another device
        model.to(memory_format=torch.channels_last)
    plan.attach(model)
    state = load_resume(out, fingerprint=fingerprint, model=model, plan=plan, device=device)
    started = time.perf_counter()
    _fit(
        model,
        plan,
        splits,
        config,
        streams,
        state,
        device=device,
        save=lambda s: save_resume(out, s, model, plan, fingerprint),
    )
    metrics = cell_metrics(config, state, plan, classes=classes, n=len(splits["train"]), device=device)
    metrics["data"] = data_provenance(config.dataset, read_json(data_info)) if data_info else None
    metrics["canaries"] = canaries.to_json() if canaries else None
    metrics.update(train_subset=train_subset is not None, seconds_this_run=round(time.perf_counter() - started, 2))
    meta = {"classes": classes, "norm": plan.norm, "crop": config.crop, "normalize": config.normalize}
    write_outputs(out, state=state, model=model, plan=plan, meta=meta, metrics=metrics)
    _log_outcome(metrics)
    return metrics


def _log_outcome(metrics: Mapping[str, Any]) -> None:
    """The cell's guarantee and its selected epoch's accuracies, for the log."""
    log.info("%s", privacy_line(metrics["privacy"]))
    log.info(
        "best epoch %d: val acc %.4f, test acc %.4f; best test acc over epochs %.4f (epoch %d, optimistic)",
        *(metrics[k] for k in ("best_epoch", "val_acc", "test_acc", "test_acc_max", "test_acc_max_epoch")),
    )


def _start(out_dir: str | os.PathLike[str], *, threads: int, device: str) -> tuple[Path, torch.device]:
    """The output folder (created) and the device of a run; PyTorch's threads and deterministic algorithms set."""
    torch.set_num_threads(cpu_threads(threads))
    torch.use_deterministic_algorithms(True, warn_only=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out, pick_device(device)


def _fit(
    model: torch.nn.Module,
    plan: Plan,
    splits: dict[str, Split],
    config: CellConfig,
    streams: Streams,
    state: RunState,
    *,
    device: torch.device,
    save: Callable[[RunState], None],
) -> None:
    """Train from ``state`` to the last epoch, saving the run state after every epoch (``save``); SIGTERM and
    SIGINT stop it after the current step (:class:`StopFlag`)."""
    with StopFlag() as stop:
        fit(
            model,
            plan,
            train=splits["train"],
            holdout={k: v for k, v in splits.items() if k != "train"},
            prep=Preprocess(crop=config.crop, augment=config.augment, normalize=config.normalize, device=device),
            epochs=config.epochs,
            eval_batch=config.eval_batch,
            streams=streams,
            state=state,
            on_epoch_end=save,
            stop=stop,
        )


def privacy_line(privacy: Mapping[str, Any]) -> str:
    """The cell's guarantee in one sentence for the log: the headline epsilon with its accountant, delta, unit
    and target, and why another accountant's figure differs.

    >>> line = privacy_line({"epsilon": 0.996, "delta": 1e-4, "accountant": "prv", "unit": "image",
    ...                      "target_epsilon": 1.0, "epsilon_rdp": 1.114})
    >>> line[:81]
    'privacy: epsilon = 0.996 at delta = 0.0001 per image (prv accountant; target 1); '
    >>> line[81:]
    'by RDP 1.114, a looser bound on the same noise (the per-epoch lines show RDP)'
    >>> privacy_line({"epsilon": None, "epsilon_reason": "non-private baseline"})
    'privacy: no epsilon (non-private baseline)'
    """
    if privacy.get("epsilon") is None:
        return f"privacy: no epsilon ({privacy.get('epsilon_reason') or 'no guarantee'})"
    target = privacy.get("target_epsilon")
    line = (
        f"privacy: epsilon = {privacy['epsilon']:.3f} at delta = {privacy.get('delta'):g} per {privacy.get('unit')} "
        f"({privacy.get('accountant')} accountant{f'; target {target:g}' if target else ''})"
    )
    rdp = privacy.get("epsilon_rdp")
    if rdp is not None and privacy.get("accountant") != "rdp":
        line += f"; by RDP {rdp:.3f}, a looser bound on the same noise (the per-epoch lines show RDP)"
    return line


def _load_splits(
    train: Pair, val: Pair, test: Pair, val_clean: Pair | None, device: torch.device, subset: np.ndarray | None
) -> dict[str, Split]:
    """train, val, (val_clean,) test on the device, in the order they are evaluated after each epoch."""
    splits = {"train": load_split("train", *train, device), "val": load_split("val", *val, device)}
    if val_clean is not None:
        splits["val_clean"] = load_split("val_clean", *val_clean, device)
    splits["test"] = load_split("test", *test, device)
    if subset is not None:
        splits["train"] = splits["train"].subset(torch.as_tensor(np.asarray(subset), dtype=torch.long, device=device))
    return splits


def _canaries(
    config: CellConfig, splits: dict[str, Split], classes: int, streams: Streams, *, audited: bool
) -> Canaries | None:
    """The one-run audit's canaries (``config.canaries``), applied to ``splits["train"]``; none for reference
    models and training subsets, which are not audited this way."""
    if not config.canaries:
        return None
    if not audited:
        log.info("canaries: none in a reference model or a training subset (only the cell itself is audited)")
        return None
    labels = splits["train"].labels.cpu().numpy()
    canaries = choose_canaries(
        labels, config.canaries, classes=classes, seed=streams.noise_seed(config.dpsgd.noise_source, "canaries")
    )  # as DP-SGD's noise
    splits["train"] = canaries.apply(splits["train"])
    log.info(
        "canaries: %d training images given a wrong label, %d of them trained on (each with probability 1/2); "
        "the left-out %d are not trained on; this model is the audited one, not a release",
        config.canaries, int(canaries.included.sum()), int((~canaries.included).sum()),
    )  # fmt: skip
    return canaries


def _training_data(
    manifest: str,
    subset: np.ndarray | None,
    ldp_privacy: str | os.PathLike[str] | None,
    data_info: str | os.PathLike[str] | None,
    *,
    dataset: str,
    canaries: Canaries | None = None,
) -> TrainingData:
    groups = read_groups(manifest)
    if subset is not None:
        groups = groups[np.asarray(subset)]
    if canaries is not None:
        groups = canaries.groups(groups)
    patients = data_info is not None and groups_are_patients(dataset, read_json(data_info)["source"])
    return TrainingData(n=len(groups), groups=groups, groups_are_patients=patients, ldp_privacy=ldp_privacy)


def _classes(splits: Mapping[str, Split], train_array: str, val_array: str) -> int:
    """Number of classes (the largest label + 1); refuse a one-class training split or an empty validation split."""
    present = sorted(set(splits["train"].labels.tolist()))
    if len(present) < 2:
        raise TrainingError(
            f"{train_array}: the training split holds only class {present}; a classifier needs at least two classes"
        )
    if len(splits["val"]) == 0:
        raise TrainingError(f"{val_array}: the validation split is empty; model selection needs validation data")
    return int(max(int(s.labels.max()) for s in splits.values() if len(s)) + 1)


def cell_metrics(
    config: CellConfig, state: RunState, plan: Plan, *, classes: int, n: int, device: torch.device
) -> dict[str, Any]:
    """``metrics.json``: the cell, its settings, the selected epoch's figures, the privacy record, provenance."""
    best = state.best_row
    max_test = max(state.history, key=lambda r: (r["test_acc"], -r["epoch"]))
    return {
        "cell": {"dataset": config.dataset, "mechanism": config.mechanism, "beta": config.beta, "seed": config.seed},
        "config": asdict(config),
        "classes": classes,
        "n_train": n,
        "selection": "best validation accuracy (earliest epoch on ties)"
        + ("; validation = the noisy Local-DP copy" if family(config.mechanism) == "ldp" else ""),
        "best_epoch": best["epoch"],
        "train_acc": best["train_acc"],
        "val_acc": best["val_acc"],
        "val_clean_acc": best.get("val_clean_acc"),
        "test_acc": best["test_acc"],
        "test_acc_max": max_test["test_acc"],
        "test_acc_max_epoch": max_test["epoch"],
        "test_acc_max_note": "the authors' protocol: the best test accuracy over epochs (optimistic; test data "
        "chose the epoch)",
        "final": state.history[-1],
        "privacy": plan.privacy().to_json(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "scheduler": scheduler_record(),
        "versions": versions(),
    }


def exit_on_interrupt(fn: Any, /, **kwargs: Any) -> Any:
    """Run ``fn``; on SIGTERM/SIGINT log where training stopped and exit with status 143 (128 + SIGTERM)."""
    try:
        return fn(**kwargs)
    except Interrupted as exc:
        log.warning("%s: stopped; the last completed epoch is saved and a rerun resumes from it", exc)
        sys.exit(143)


def reference_members(n: int, *, index: int, identity: tuple = ()) -> np.ndarray:
    """Which of ``n`` training images reference model ``index`` of a configuration (``identity``: dataset,
    mechanism, beta) trains on: a random half, its own per configuration and index.

    >>> m = reference_members(10, index=3)
    >>> int(m.sum()), bool((m == reference_members(10, index=3)).all())
    (5, True)
    >>> bool((m != reference_members(10, index=4)).any())
    True
    """
    members = np.zeros(n, dtype=bool)
    rng = np.random.default_rng(derive_seed(*identity, index, "reference-members"))
    members[rng.permutation(n)[: n // 2]] = True
    return members


def run_reference(
    *,
    settings: Mapping[str, Any],
    code: str,
    inputs: Mapping[str, str],
    out_dir: str | os.PathLike[str],
    index: int,
    threads: int,
    execution: Mapping[str, Any] | None = None,
    key: bytes | None = None,
) -> dict[str, Any]:
    """Snakemake entry point of a reference model: the cell's training on a random half of its training split
    (:func:`reference_members`), then ``members.npy`` (the mask) beside the usual outputs."""
    from ..core.fileio import atomic_outputs

    n = len(read_labels(inputs["train_csv"]))
    identity = (settings["dataset"], settings["mechanism"], float(settings["beta"]))
    members = reference_members(n, index=index, identity=identity)
    result = run_cell(
        settings=settings,
        code=code,
        inputs=inputs,
        out_dir=out_dir,
        threads=threads,
        execution=execution,
        key=key,
        train_subset=np.flatnonzero(members),
        reference=index,
    )
    with atomic_outputs(Path(out_dir) / "members.npy") as (tmp,), open(tmp, "wb") as fh:
        np.save(fh, members)
    return result


def run_cell(
    *,
    settings: Mapping[str, Any],
    code: str,
    inputs: Mapping[str, str],
    out_dir: str | os.PathLike[str],
    threads: int,
    execution: Mapping[str, Any] | None = None,
    train_subset: np.ndarray | None = None,
    reference: int | None = None,
    key: bytes | None = None,
) -> dict[str, Any]:
    """Snakemake entry point: ``settings`` is the rule's ``cell`` param (what decides the result), ``execution``
    the speed-only settings read from the configuration when the job runs (``device``, ``eval_batch``,
    ``max_physical_batch``, ``dp_max_physical_batch``), ``inputs`` the rule's named inputs."""
    settings = dict(settings)
    subset = None if train_subset is None else np.asarray(train_subset).tolist()
    keyed = key_id(key) if key is not None else None  # a new key makes a run that cannot resume an old one
    fingerprint = hashlib.sha256(
        json.dumps([settings, code, subset, reference, keyed], sort_keys=True).encode()
    ).hexdigest()
    dp_settings = dict(settings.pop("dpsgd", {}))
    execution = dict(execution or {})
    if "dp_max_physical_batch" in execution:
        dp_settings["max_physical_batch"] = execution.pop("dp_max_physical_batch")
    config = CellConfig(dpsgd=DPSettings(**dp_settings), **{**settings, **execution})

    def pair(split: str, array_key: str | None = None) -> Pair:
        return inputs[array_key or split], inputs[f"{split}_csv"]

    return exit_on_interrupt(
        train_cell,
        config=config,
        train_subset=train_subset,
        train=pair("train"),
        val=pair("val"),
        test=pair("test"),
        val_clean=pair("val", "val_clean") if "val_clean" in inputs else None,
        weights=inputs.get("weights"),
        ldp_privacy=inputs.get("privacy"),
        data_info=inputs.get("info"),
        reference=reference,
        out_dir=out_dir,
        fingerprint=fingerprint,
        threads=threads,
        key=key,
    )
