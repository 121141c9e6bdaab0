"""Evaluate a trained cell from ``best.pt``: clinical metrics on the test split (and, for Local-DP cells, on the
noisy and the clean validation data), and the membership-inference audit. Writes ``evaluation.json``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .audit import lira_attack, loss_attack, one_run_audit
from .canaries import Canaries
from .errors import TrainingError
from .fileio import atomic_outputs
from .ldp import LdpParams, noisy_batch, storage_of, store
from .metrics import classification_report
from .models import build_resnet18
from .names import family
from .runtime import cpu_threads, derive_seed, pick_device
from .tensors import Preprocess, Split, infer, load_split

log = logging.getLogger(__name__)


def predict(model: torch.nn.Module, split: Split, prep: Preprocess, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities (N, K), per-image cross-entropy (N,)) of ``model`` in eval mode."""
    result = infer(model, split, prep, batch)
    return result.probabilities, result.losses


def _noised_like_copy(split: Split, privacy: Mapping[str, Any], *, dataset: str, seed: int) -> Split:
    """The held-out images noised exactly as the Local-DP copy was (same mechanism, beta and storage; their own
    seeded generators), so that a noisy member and a noisy non-member differ only in membership."""
    clean = split.images.cpu().numpy()
    values = noisy_batch(
        clean,
        mechanism=privacy["mechanism"],
        beta=privacy["beta"],
        seed=seed,
        dataset=dataset,
        split="audit-nonmembers",
        start=0,
        params=LdpParams.from_record(privacy),
    )
    stored = np.empty(clean.shape, dtype=storage_of(privacy["mechanism"], privacy["clipped"]))
    store(values, stored)
    return Split(
        name=f"{split.name}-noised", images=torch.from_numpy(stored).to(split.images.device), labels=split.labels
    )


def _load_model(best: str | os.PathLike[str], dev: torch.device) -> tuple[torch.nn.Module, Preprocess, int]:
    """A network from a ``best.pt`` checkpoint, in eval mode, with the preprocessing it was trained with, and the
    epoch it was saved at."""
    checkpoint = torch.load(best, map_location=dev, weights_only=True)
    model = build_resnet18(num_classes=checkpoint["classes"], weights=None, norm=checkpoint["norm"]).to(dev)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    prep = Preprocess(crop=checkpoint["crop"], augment=False, normalize=checkpoint["normalize"], device=dev)
    return model, prep, checkpoint["epoch"]


Losses = Callable[[Split], np.ndarray]  # a model's per-image losses on a split
#: The delta of the empirical epsilon bounds of cells whose guarantee has none (no privacy, the authors' shift).
AUDIT_DELTA = 1e-5


def audit_delta(privacy: Mapping[str, Any]) -> float:
    """The delta at which a cell's audits bound epsilon: the cell's own (DP-SGD's delta, 0 for the Laplace
    mechanism), or :data:`AUDIT_DELTA` where its guarantee has none."""
    delta = privacy.get("delta")
    return float(delta) if delta is not None else AUDIT_DELTA


def _accounted_for(audit: str, privacy: Mapping[str, Any]) -> float:
    """The epsilon an audit's membership question is bounded by. Canaries are each their own privacy unit: the
    accounted epsilon. An image's membership at the patient unit changes its patient's record (the patient's
    other images stay): a replacement, bounded by the group-of-2 epsilon (``epsilon_m_pixels``).

    >>> p = {"epsilon": 1.0, "unit": "patient", "epsilon_m_pixels": 2.3}
    >>> _accounted_for("members", p), _accounted_for("canaries", p), _accounted_for("members", {"epsilon": 1.0})
    (2.3, 1.0, 1.0)
    """
    if audit == "canaries" or privacy.get("unit") != "patient":
        return float(privacy["epsilon"])
    return float(privacy.get("epsilon_m_pixels") or privacy["epsilon"])


def _check_against_accountant(audits: Mapping[str, Any], privacy: Mapping[str, Any], cell: Mapping[str, Any]) -> None:
    """An empirical lower bound above a DP-SGD cell's accounted epsilon means the training or the accounting is
    wrong: stop rather than publish both."""
    if privacy.get("mechanism") != "dpsgd" or privacy.get("epsilon") is None:
        return
    for name, audit in audits.items():
        lb = (audit.get("epsilon") or audit).get("epsilon_lb")
        accounted = _accounted_for(name, privacy)
        if lb is not None and lb > accounted + 1e-9:
            raise TrainingError(
                f"{cell}: the {name} audit's empirical epsilon lower bound {lb:.3f} exceeds the accounted epsilon "
                f"{accounted:.3f} ({privacy.get('accountant')}, delta {privacy.get('delta')}): DP-SGD cannot "
                f"have given this model its guarantee. This is a bug in the training or the accounting; do not "
                f"publish this cell"
            )


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
    record = json.loads(Path(metrics).read_text())
    cell, delta = record["cell"], audit_delta(record["privacy"])
    model, prep, best_epoch = _load_model(best, dev)
    seed = derive_seed(cell["dataset"], cell["mechanism"], cell["beta"], cell["seed"], seed)  # this cell's own
    kappa = cell["dataset"] == "aptos"

    def split(key: str) -> Split:
        return load_split(key, inputs[f"{key}"], inputs[f"{key}_csv"], dev)

    test = split("test")
    test_proba, test_loss = predict(model, test, prep, eval_batch)
    result: dict[str, Any] = {
        "cell": cell,
        "best_epoch": best_epoch,
        "test": classification_report(
            test.labels.cpu().numpy(), test_proba, kappa=kappa, bootstrap=bootstrap, seed=derive_seed(seed, "bootstrap")
        ),
    }
    for key in ("val_noisy", "val_clean") if family(cell["mechanism"]) == "ldp" else ():
        labels, proba = split(key).labels.cpu().numpy(), predict(model, split(key), prep, eval_batch)[0]
        result[key] = classification_report(labels, proba, kappa=kappa, bootstrap=0)
    # Canaries are audited on their own: the other audits use the training images trained on as themselves.
    ordinary = _ordinary_images(record.get("canaries"), inputs["train_clean_csv"])

    def audited(key: str) -> Split:
        whole = split(key)
        if ordinary is None or key not in ("train_clean", "train_seen"):
            return whole
        return whole.subset(torch.as_tensor(ordinary, device=whole.labels.device))

    audits, headline, (members, nonmembers) = _loss_audits(
        lambda s: predict(model, s, prep, eval_batch)[1],
        audited,
        test=(test, test_loss),
        cell=cell,
        inputs=inputs,
        seed=seed,
        delta=delta,
    )
    if references:  # the headline audit's images, with the calibrated attack
        audits["lira"] = {
            **_lira(
                references, members, nonmembers, dev=dev, eval_batch=eval_batch, seed=seed, delta=delta, index=ordinary
            ),
            "members": audits[headline]["members"],
            "nonmembers": audits[headline]["nonmembers"],
        }
    if record.get("canaries"):  # the one-run audit of a model trained with canaries
        audits["canaries"] = _canary_audit(
            lambda s: predict(model, s, prep, eval_batch)[1], split("train_clean"), record["canaries"], delta, seed
        )
    result["audit"] = audits
    result["audit_headline"] = headline
    _check_against_accountant(audits, record["privacy"], cell)
    with atomic_outputs(out_json) as (tmp,):
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    _log_result(result)
    return result


def _ordinary_images(canaries: Mapping[str, Any] | None, manifest: str) -> np.ndarray | None:
    """Positions of the training images that are not canaries (None without canaries)."""
    if not canaries:
        return None
    from .tensors import read_labels

    keep = np.ones(len(read_labels(manifest)), dtype=bool)
    keep[np.asarray(canaries["indices"], dtype=np.int64)] = False
    return np.flatnonzero(keep)


def _canary_audit(
    losses: Losses, train_clean: Split, record: Mapping[str, Any], delta: float, seed: int
) -> dict[str, Any]:
    """The one-run audit: every canary scored by minus the model's loss on its wrong label."""
    canaries = Canaries.from_json(record)
    index = torch.as_tensor(canaries.indices, device=train_clean.labels.device)
    wrong = torch.as_tensor(canaries.labels, device=train_clean.labels.device)
    scores = -losses(Split("canaries", train_clean.images[index], wrong))
    return {
        **one_run_audit(scores, canaries.included, delta=delta, seed=derive_seed(seed, "canaries")),
        "members": "canaries trained on (a training image with a random wrong label, kept with probability 1/2)",
        "nonmembers": "canaries left out of training",
    }


def _log_result(result: Mapping[str, Any]) -> None:
    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    def lower_bound(audit: Mapping[str, Any]) -> str:
        found = audit.get("epsilon") or audit  # the one-run audit carries its bound at the top level
        return f"epsilon >= {fmt(found.get('epsilon_lb'))} (could show at most {fmt(found.get('epsilon_ceiling'))})"

    audits = "; ".join(
        f"{k}: {v['correct']} of {v['guesses_in'] + v['guesses_out']} guesses right, {lower_bound(v)}"
        if k == "canaries"
        else f"{k}: AUC {fmt(v.get('auc'))} (0.5 = chance), {lower_bound(v)}"
        for k, v in result["audit"].items()
    )
    accuracy, auroc = result["test"]["accuracy"], result["test"]["auroc"]
    log.info("test accuracy %s, AUROC %s; membership-inference audits: %s", fmt(accuracy), fmt(auroc), audits)


def _loss_audits(
    losses: Losses,
    split: Callable[[str], Split],
    *,
    test: tuple[Split, np.ndarray],
    cell: Mapping[str, Any],
    inputs: Mapping[str, str],
    seed: int,
    delta: float,
) -> tuple[dict[str, Any], str, tuple[tuple[Split, np.ndarray], tuple[Split, np.ndarray]]]:
    """The loss-threshold audits of a cell, the name of the headline one, and its (split, losses) members and
    non-members. Local-DP cells: the noisy images seen against test images noised alike (headline), and the
    clean originals against clean test images. Others: the training images against test images. ``test``: the
    test split and the model's losses on it."""
    audit_seed = derive_seed(seed, "audit")
    (test, test_loss), train_clean = test, split("train_clean")
    clean_losses = losses(train_clean)
    if family(cell["mechanism"]) != "ldp":
        audit = loss_attack(clean_losses, test_loss, seed=audit_seed, delta=delta)
        sides = (train_clean, clean_losses), (test, test_loss)
        return {"members": {**audit, **AUDIT_SIDES["members"]}}, "members", sides
    privacy = json.loads(Path(inputs["privacy"]).read_text())
    seen = split("train_seen")
    noised = _noised_like_copy(test, privacy, dataset=cell["dataset"], seed=derive_seed(seed, "nm"))
    seen_losses, noised_losses = losses(seen), losses(noised)
    audits = {
        "noisy_members": {
            **loss_attack(seen_losses, noised_losses, seed=audit_seed, delta=delta),
            **AUDIT_SIDES["noisy_members"],
        },
        "clean_members": {
            **loss_attack(clean_losses, test_loss, seed=audit_seed, delta=delta),
            **AUDIT_SIDES["clean_members"],
        },
    }
    return audits, "noisy_members", ((seen, seen_losses), (noised, noised_losses))


AUDIT_SIDES = {
    "members": {"members": "the training images", "nonmembers": "test images (held out, same distribution)"},
    "noisy_members": {
        "members": "the noisy training images the model saw",
        "nonmembers": "test images noised the same way",
    },
    "clean_members": {"members": "the clean originals of the training images", "nonmembers": "clean test images"},
}


def _lira(
    references: Sequence[tuple[str, str]],
    members: tuple[Split, np.ndarray],
    nonmembers: tuple[Split, np.ndarray],
    *,
    dev: torch.device,
    eval_batch: int,
    seed: int,
    delta: float,
    index: np.ndarray | None = None,
) -> dict[str, Any]:
    """Offline LiRA on the headline audit's images: each reference model's losses, and which images it saw."""
    (member_split, member_losses), (nonmember_split, nonmember_losses) = members, nonmembers
    ref_member, ref_nonmember, ref_in = [], [], []
    for ref_best, ref_members in references:
        ref_model, ref_prep, _ = _load_model(ref_best, dev)
        ref_member.append(predict(ref_model, member_split, ref_prep, eval_batch)[1])
        ref_nonmember.append(predict(ref_model, nonmember_split, ref_prep, eval_batch)[1])
        ref_in.append(np.load(ref_members))
    ins = np.stack(ref_in)
    if index is not None:  # the audited training images only (the canaries are left out)
        ins = ins[:, index]
    if ins.shape[1] != len(member_losses):
        raise ValueError(f"{references[0][1]}: {ins.shape[1]} images, the training split has {len(member_losses)}")
    return lira_attack(
        (member_losses, np.stack(ref_member), ~ins),
        (nonmember_losses, np.stack(ref_nonmember), np.ones((len(references), len(nonmember_losses)), bool)),
        seed=derive_seed(seed, "audit"),
        delta=delta,
    )
