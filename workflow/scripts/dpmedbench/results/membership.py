"""The membership-inference audits of a cell: can an attacker tell the images a model trained on from images it
never saw? Loss-threshold attacks on the training images against the test images (for Local-DP cells, on the
noisy images seen against test images noised alike, and on the clean originals), offline LiRA with reference
models, and the check that no empirical bound exceeds what the accountant promised."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..core.errors import TrainingError
from ..core.fileio import read_json
from ..core.names import family
from ..core.privacy import PrivacyRecord
from ..core.runtime import derive_seed
from ..core.tensors import Split
from ..ldp.mechanisms import LdpParams, noisy_batch, storage_of, store
from .attacks import lira_attack, loss_attack
from .inference import Losses, load_model, predict

log = logging.getLogger(__name__)

#: The delta of the empirical epsilon bounds of cells whose guarantee has none (no privacy, the authors' shift).
AUDIT_DELTA = 1e-5
#: Who the members and non-members of each loss audit are.
AUDIT_SIDES = {
    "members": {"members": "the training images", "nonmembers": "test images (held out, same distribution)"},
    "noisy_members": {
        "members": "the noisy training images the model saw",
        "nonmembers": "test images noised the same way",
    },
    "clean_members": {"members": "the clean originals of the training images", "nonmembers": "clean test images"},
}
#: (split, the model's losses on it): one side of an audit.
Side = tuple[Split, np.ndarray]


def audit_delta(privacy: Mapping[str, Any]) -> float:
    """The delta at which a cell's audits bound epsilon: the cell's own (DP-SGD's delta, 0 for the Laplace
    mechanism), or :data:`AUDIT_DELTA` where its guarantee has none."""
    delta = privacy.get("delta")
    return float(delta) if delta is not None else AUDIT_DELTA


def check_against_accountant(
    audits: Mapping[str, Any], privacy: Mapping[str, Any], cell: Mapping[str, Any]
) -> list[str]:
    """Hold a DP-SGD cell's audits to its accounted epsilon (:meth:`PrivacyRecord.membership_epsilon`; the
    canaries are privacy units of their own). A valid lower bound above it (the one-run canary audit: membership
    randomised) means the training or the accounting is wrong: stop rather than publish both. A membership
    estimate above it (fixed members against held-out images) contradicts nothing: returned as a warning that
    says why it can happen."""
    if privacy.get("mechanism") != "dpsgd" or privacy.get("epsilon") is None:
        return []
    record, warnings = PrivacyRecord.from_json(privacy), []
    for name, audit in audits.items():
        accounted = record.membership_epsilon(own_unit=name == "canaries")
        if name == "canaries":
            lb = audit.get("epsilon_lb")
            if lb is not None and accounted is not None and lb > accounted + 1e-9:
                raise TrainingError(
                    f"{cell}: the canary audit's empirical epsilon lower bound {lb:.3f} exceeds the accounted "
                    f"epsilon {accounted:.3f} ({privacy.get('accountant')}, delta {privacy.get('delta')}): DP-SGD "
                    "cannot have given this model its guarantee. This is a bug in the training or the accounting; "
                    "do not publish this cell"
                )
            continue
        estimate = (audit.get("epsilon") or {}).get("epsilon_estimate")
        if estimate is not None and accounted is not None and estimate > accounted + 1e-9:
            warnings.append(
                f"the {name} audit's epsilon estimate {estimate:.3f} exceeds the accounted epsilon {accounted:.3f}: "
                "not a contradiction, since its membership was not randomised - the training and held-out images "
                "can differ in population (distribution shift), which the attack then detects instead of "
                "membership; only the canary audit bounds epsilon"
            )
    for warning in warnings:
        log.warning("%s: %s", cell, warning)
    return warnings


def noised_like_copy(split: Split, privacy: Mapping[str, Any], *, dataset: str, seed: int) -> Split:
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


def loss_audits(
    losses: Losses,
    split: Callable[[str], Split],
    *,
    test: Side,
    cell: Mapping[str, Any],
    inputs: Mapping[str, str],
    seed: int,
    delta: float,
) -> tuple[dict[str, Any], str, tuple[Side, Side]]:
    """The loss-threshold audits of a cell, the name of the headline one, and its members' and non-members'
    sides. Local-DP cells: the noisy images seen against test images noised alike (headline), and the clean
    originals against clean test images. Others: the training images against test images. ``test``: the test
    split and the model's losses on it."""
    audit_seed = derive_seed(seed, "audit")
    (test, test_loss), train_clean = test, split("train_clean")
    clean_losses = losses(train_clean)
    if family(cell["mechanism"]) != "ldp":
        audit = loss_attack(clean_losses, test_loss, seed=audit_seed, delta=delta)
        sides = (train_clean, clean_losses), (test, test_loss)
        return {"members": {**audit, **AUDIT_SIDES["members"]}}, "members", sides
    privacy = read_json(inputs["privacy"])
    seen = split("train_seen")
    noised = noised_like_copy(test, privacy, dataset=cell["dataset"], seed=derive_seed(seed, "nm"))
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


def lira(
    references: Sequence[tuple[str, str]],
    members: Side,
    nonmembers: Side,
    *,
    dev: torch.device,
    eval_batch: int,
    seed: int,
    delta: float,
    index: np.ndarray | None = None,
) -> dict[str, Any]:
    """Offline LiRA on the headline audit's images: each reference model's losses, and which images it saw
    (``index``: the positions of the audited training images, without the canaries)."""
    (member_split, member_losses), (nonmember_split, nonmember_losses) = members, nonmembers
    ref_member, ref_nonmember, ref_in = [], [], []
    for ref_best, ref_members in references:
        ref_model, ref_prep, _ = load_model(ref_best, dev)
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
