"""Evaluate a trained cell from ``best.pt``: clinical metrics on the test split (and, for Local-DP cells, on the
noisy and the clean validation data), the membership-inference audits (:mod:`.membership`) and, for a model
trained with canaries, the one-run audit (:mod:`.canaryaudit`). Writes ``evaluation.json``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..core.fileio import atomic_outputs, json_text, read_json
from ..core.names import family
from ..core.runtime import cpu_threads, derive_seed, pick_device
from ..core.tensors import Preprocess, Split, load_split
from .canaryaudit import canary_audit, ordinary_images
from .inference import Losses, load_model, losses_of, predict
from .membership import audit_delta, check_against_accountant, lira, loss_audits
from .metrics import classification_report

log = logging.getLogger(__name__)


def evaluate_cell(
    *,
    best: str | os.PathLike[str],
    metrics: str | os.PathLike[str],
    inputs: Mapping[str, str],
    out_json: str | os.PathLike[str],
    device: str = "auto",
    bootstrap: int = 1000,
    seed: int = 0,
    threads: int = 1,
    eval_batch: int = 256,
    references: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """``inputs``: (array, manifest) paths keyed ``test``, ``train_clean`` and, for ``ldp`` cells, ``train_seen``
    (the noisy copy), ``val_noisy``, ``val_clean`` and ``privacy``. ``references``: (``best.pt``, ``members.npy``)
    of the reference models of this cell's configuration; with any, the headline audit is repeated with the
    calibrated attack (offline LiRA). The evaluation's random streams (bootstrap, audit splits, the noise of the
    audit's noised non-members) derive from the cell's identity and ``seed``."""
    torch.set_num_threads(cpu_threads(threads))
    dev = pick_device(device)
    record = read_json(metrics)
    cell = record["cell"]
    model, prep, best_epoch = load_model(best, dev)
    seed = derive_seed(cell["dataset"], cell["mechanism"], cell["beta"], cell["seed"], seed)  # this cell's own

    def split(key: str) -> Split:
        return load_split(key, inputs[f"{key}"], inputs[f"{key}_csv"], dev)

    test = split("test")
    test_proba, test_loss = predict(model, test, prep, eval_batch)
    result: dict[str, Any] = {"cell": cell, "best_epoch": best_epoch}
    result.update(_clinical(model, prep, split, cell, test=(test, test_proba), bootstrap=bootstrap, seed=seed,
                            eval_batch=eval_batch))  # fmt: skip
    result["audit"], result["audit_headline"] = _audits(
        losses_of(model, prep, eval_batch),
        split,
        record,
        inputs,
        test=(test, test_loss),
        references=references,
        dev=dev,
        eval_batch=eval_batch,
        seed=seed,
    )
    result["audit_warnings"] = check_against_accountant(result["audit"], record["privacy"], cell)
    # What of this evaluation the cell's guarantee does not cover (the record's list: clean-data figures,
    # exact training counts, the audits themselves).
    result["outside_guarantee"] = record["privacy"].get("outside_guarantee") or {}
    with atomic_outputs(out_json) as (tmp,):
        tmp.write_text(json_text(result))
    _log_result(result)
    return result


def _clinical(
    model: torch.nn.Module,
    prep: Preprocess,
    split: Callable[[str], Split],
    cell: Mapping[str, Any],
    *,
    test: tuple[Split, np.ndarray],
    bootstrap: int,
    seed: int,
    eval_batch: int,
) -> dict[str, Any]:
    """The classification report on the test split (``test``: it and the model's probabilities on it), and for
    Local-DP cells on the noisy and the clean validation data."""
    kappa = cell["dataset"] == "aptos"
    images, proba = test
    out = {
        "test": classification_report(
            images.labels.cpu().numpy(), proba, kappa=kappa, bootstrap=bootstrap, seed=derive_seed(seed, "bootstrap")
        )
    }
    for key in ("val_noisy", "val_clean") if family(cell["mechanism"]) == "ldp" else ():
        labels, proba = split(key).labels.cpu().numpy(), predict(model, split(key), prep, eval_batch)[0]
        out[key] = classification_report(labels, proba, kappa=kappa, bootstrap=0)
    return out


def _audits(
    losses: Losses,
    split: Callable[[str], Split],
    record: Mapping[str, Any],
    inputs: Mapping[str, str],
    *,
    test: tuple[Split, np.ndarray],
    references: Sequence[tuple[str, str]],
    dev: torch.device,
    eval_batch: int,
    seed: int,
) -> tuple[dict[str, Any], str]:
    """Every audit of the cell and the name of the headline one: the loss audits, LiRA on the headline audit's
    images when there are reference models, the one-run audit when the model trained with canaries."""
    cell, delta = record["cell"], audit_delta(record["privacy"])
    # Canaries are audited on their own: the other audits use the training images trained on as themselves.
    ordinary = ordinary_images(record.get("canaries"), inputs["train_clean_csv"])

    def audited(key: str) -> Split:
        whole = split(key)
        if ordinary is None or key not in ("train_clean", "train_seen"):
            return whole
        return whole.subset(torch.as_tensor(ordinary, device=whole.labels.device))

    audits, headline, (members, nonmembers) = loss_audits(
        losses, audited, test=test, cell=cell, inputs=inputs, seed=seed, delta=delta
    )
    if references:  # the headline audit's images, with the calibrated attack
        audits["lira"] = {
            **lira(references, members, nonmembers, dev=dev, eval_batch=eval_batch, seed=seed, delta=delta,
                   index=ordinary),
            "members": audits[headline]["members"],
            "nonmembers": audits[headline]["nonmembers"],
        }  # fmt: skip
    if record.get("canaries"):  # the one-run audit of a model trained with canaries
        audits["canaries"] = canary_audit(losses, split("train_clean"), record["canaries"], delta, seed)
    return audits, headline


def _log_result(result: Mapping[str, Any]) -> None:
    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    def estimate(audit: Mapping[str, Any]) -> str:
        found = audit.get("epsilon") or {}
        return (
            f"epsilon estimate {fmt(found.get('epsilon_estimate'))} (not a bound; at most "
            f"{fmt(found.get('epsilon_estimate_ceiling'))} with this sample)"
        )

    audits = "; ".join(
        f"{k}: {v['correct']} of {v['guesses_in'] + v['guesses_out']} guesses right, epsilon >= "
        f"{fmt(v.get('epsilon_lb'))} (could show at most {fmt(v.get('epsilon_ceiling'))})"
        if k == "canaries"
        else f"{k}: AUC {fmt(v.get('auc'))} (0.5 = chance), {estimate(v)}"
        for k, v in result["audit"].items()
    )
    accuracy, auroc = result["test"]["accuracy"], result["test"]["auroc"]
    log.info("test accuracy %s, AUROC %s; membership-inference audits: %s", fmt(accuracy), fmt(auroc), audits)
