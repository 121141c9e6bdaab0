"""Evaluation and summary of trained cells: real tiny training runs, then evaluate_cell and write_summary."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from dpmedbench.core.privacy import PrivacyRecord
from dpmedbench.ldp.copies import materialise_copy
from dpmedbench.results.evaluate import evaluate_cell
from dpmedbench.results.summary import COLUMNS, write_summary
from dpmedbench.training.cell import reference_members, train_cell

from ..support.cells import TEST_KEY, make_split, tiny

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("mechanism", ["none", "ldp-laplace_pixel", "dpsgd"])
def test_evaluate_and_summarise_a_cell(tmp_path, mechanism):
    folder = tmp_path / "prepared"
    data = {s: make_split(folder, s, n, seed=i) for i, (s, n) in enumerate((("train", 24), ("val", 8), ("test", 10)))}
    inputs = {
        "test": data["test"][0],
        "test_csv": data["test"][1],
        "train_clean": data["train"][0],
        "train_clean_csv": data["train"][1],
    }
    train, val, extra = data["train"], data["val"], {}
    if mechanism == "ldp-laplace_pixel":
        copy = tmp_path / "copy"
        materialise_copy(
            dataset="chest_xray",
            beta=0.5,
            mechanism="laplace_pixel",
            clip=False,
            seed=1,
            noise_source="keyed",
            key=TEST_KEY,
            inputs={"train": data["train"][0], "val": data["val"][0]},
            outputs={"train": copy / "train.npy", "val": copy / "val.npy"},
            privacy_json=copy / "privacy.json",
        )
        train, val = (str(copy / "train.npy"), data["train"][1]), (str(copy / "val.npy"), data["val"][1])
        extra = {"val_clean": data["val"], "ldp_privacy": copy / "privacy.json"}
        inputs.update(
            train_seen=train[0],
            train_seen_csv=train[1],
            val_noisy=val[0],
            val_noisy_csv=val[1],
            val_clean=data["val"][0],
            val_clean_csv=data["val"][1],
            privacy=str(copy / "privacy.json"),
        )
    cell = tmp_path / "cell"
    train_cell(tiny(mechanism, beta=0.5), train=train, val=val, test=data["test"], out_dir=cell, **extra, key=TEST_KEY)
    references = []
    for k in range(2):  # the calibrated attack's reference models: the same training on random halves
        ref = tmp_path / f"ref{k}"
        members = reference_members(24, index=k)
        train_cell(
            tiny(mechanism, beta=0.5, seed=1_000_000 + k),
            train=train,
            val=val,
            test=data["test"],
            out_dir=ref,
            train_subset=np.flatnonzero(members),
            **extra,
            key=TEST_KEY,
        )
        assert json.loads((ref / "metrics.json").read_text())["n_train"] == 12
        np.save(ref / "members.npy", members)
        references.append((str(ref / "best.pt"), str(ref / "members.npy")))
    result = evaluate_cell(
        best=cell / "best.pt",
        metrics=cell / "metrics.json",
        inputs=inputs,
        out_json=cell / "evaluation.json",
        device="cpu",
        bootstrap=50,
        references=references,
    )
    assert json.loads((cell / "evaluation.json").read_text()) == result
    test = result["test"]
    assert test["n"] == 10 and np.array(test["confusion_matrix"]).sum() == 10
    assert test["accuracy_ci"][0] <= test["accuracy"] <= test["accuracy_ci"][1]
    metrics = json.loads((cell / "metrics.json").read_text())
    assert test["accuracy"] == pytest.approx(metrics["test_acc"])  # the same model, the same split
    headline = result["audit"][result["audit_headline"]]
    assert headline["n_members"] == headline["n_nonmembers"] == 10 and 0 <= headline["auc"] <= 1
    lira = result["audit"]["lira"]
    assert lira["reference_models"] == 2 and lira["members"] == headline["members"] and 0 <= lira["auc"] <= 1
    assert 0 < lira["n_members"] == lira["n_nonmembers"] <= 10
    if mechanism == "ldp-laplace_pixel":
        assert set(result["audit"]) == {"noisy_members", "clean_members", "lira"}
        assert result["val_noisy"]["n"] == result["val_clean"]["n"] == 8

    rows = write_summary(
        metrics=[cell / "metrics.json"], evaluations=[cell / "evaluation.json"], out_csv=tmp_path / "summary.csv"
    )
    with open(tmp_path / "summary.csv", newline="") as fh:
        written = list(csv.DictReader(fh))
    assert tuple(written[0]) == COLUMNS and len(written) == 1
    row = rows[0]
    assert row["mechanism"] == mechanism and row["test_acc"] == metrics["test_acc"]
    assert row["audit_auc"] == headline["auc"]
    assert 0 <= row["audit_epsilon_estimate"] <= row["audit_epsilon_estimate_ceiling"]
    assert row["audit_lira_epsilon_estimate"] is not None and "audit_epsilon_lb" not in row  # an estimate, no bound
    assert "not a lower bound" in headline["epsilon"]["method"] and "tpr_at_01pct_fpr_note" in headline
    assert row["audit_lira_auc"] == lira["auc"] and row["audit_lira_references"] == 2
    # What the audits and the audit figures hold the cell to: the record's membership epsilon.
    assert row["epsilon_membership"] == PrivacyRecord.from_json(metrics["privacy"]).membership_epsilon()
    if mechanism == "dpsgd":
        assert row["accountant"] == "prv" and row["epsilon"] <= 2.0 + 0.02 and row["steps"] == 6
        assert row["epsilon_membership"] == row["epsilon"]  # the image unit
    elif mechanism == "ldp-laplace_pixel":
        assert row["epsilon"] == 2.0 and row["audit_clean_auc"] is not None
        assert row["epsilon_membership"] == row["epsilon_per_image"] > row["epsilon"]  # the whole image
    else:
        assert row["epsilon"] is None and row["accountant"] is None and row["epsilon_membership"] is None


def test_only_a_valid_bound_above_the_accounted_epsilon_stops_the_evaluation(caplog):
    """The one-run canary audit randomises membership: its lower bound above the accounted epsilon is a bug, and
    stops the evaluation. The members-against-held-out audits do not: their estimate above it is a warning that
    says why it can happen (distribution shift), never an error."""
    from dpmedbench.core.errors import TrainingError
    from dpmedbench.results.membership import audit_delta
    from dpmedbench.results.membership import check_against_accountant as check

    privacy = {"mechanism": "dpsgd", "epsilon": 1.0, "delta": 1e-4, "accountant": "prv"}
    cell = {"dataset": "chest_xray", "mechanism": "dpsgd", "beta": 1.0, "seed": 0}
    assert (
        check({"members": {"epsilon": {"epsilon_estimate": 0.4}}, "canaries": {"epsilon_lb": 0.9}}, privacy, cell) == []
    )
    with caplog.at_level("WARNING"):
        warnings = check({"members": {"epsilon": {"epsilon_estimate": 1.7}}}, privacy, cell)
    assert len(warnings) == 1 and "estimate 1.700 exceeds the accounted epsilon 1.000" in warnings[0]
    assert "distribution shift" in warnings[0] and "not a contradiction" in caplog.text
    with pytest.raises(TrainingError, match="canary audit's empirical epsilon lower bound 1.700 exceeds the"):
        check({"canaries": {"epsilon_lb": 1.7}}, privacy, cell)
    assert check({"canaries": {"epsilon_lb": 9.0}}, {"mechanism": "none", "epsilon": None}, cell) == []
    assert audit_delta(privacy) == 1e-4 and audit_delta({"delta": 0.0}) == 0.0 and audit_delta({}) == 1e-5
    # At the patient unit an image's membership is held to the replace-one epsilon of its patient's record; the
    # canaries (their own units) to the accounted epsilon.
    by_patient = {**privacy, "unit": "patient", "epsilon_replace": 2.4}
    assert check({"members": {"epsilon": {"epsilon_estimate": 1.7}}}, by_patient, cell) == []
    assert "accounted epsilon 2.400" in check({"members": {"epsilon": {"epsilon_estimate": 2.5}}}, by_patient, cell)[0]
    with pytest.raises(TrainingError, match="lower bound 1.700 exceeds the accounted epsilon 1.000"):
        check({"canaries": {"epsilon_lb": 1.7}}, by_patient, cell)


@pytest.mark.parametrize(("sigma", "memorises"), [(0.0, True), (100.0, False)])
def test_one_run_canary_audit_sees_memorisation_and_only_memorisation(tmp_path, sigma, memorises):
    """DP-SGD with 160 canaries among 320 images through train_cell and evaluate_cell. With no noise (sigma = 0)
    the model fits the canaries' wrong labels and the audit certifies a clearly positive epsilon; with
    sigma = 100 it cannot, and the bound stays near 0. The final model is audited (``last.pt``: the same format
    as ``best.pt``), since 8 validation images pick an epoch almost at random."""
    folder = tmp_path / "prepared"
    data = {s: make_split(folder, s, n, seed=i) for i, (s, n) in enumerate((("train", 320), ("val", 8), ("test", 8)))}
    config = tiny(
        "dpsgd", epochs=40, batch_size=16, lr=0.01, momentum=0.9, weight_decay=0.0, augment=False, crop=16,
        canaries=160, dp={"noise_multiplier": sigma, "max_grad_norm": 10.0, "max_physical_batch": 64,
                          "accountant": "rdp"},
    )  # fmt: skip
    cell = tmp_path / "cell"
    metrics = train_cell(config, train=data["train"], val=data["val"], test=data["test"], out_dir=cell, key=TEST_KEY)
    record = metrics["canaries"]
    assert record["m"] == 160 and metrics["n_train"] == 160 + record["included"]
    # no noise, no guarantee: no epsilon (null, not a JSON-breaking Infinity) and the reason
    assert (metrics["privacy"]["epsilon"] is None) == (sigma == 0) == (not metrics["privacy"]["formal_guarantee"])
    written = json.loads((cell / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    if sigma == 0:
        assert "noise multiplier 0" in written["privacy"]["epsilon_reason"]
        assert written["privacy"]["epsilon_replace"] is None and written["privacy"]["epsilon_prv"] is None
    result = evaluate_cell(
        best=cell / "last.pt",
        metrics=cell / "metrics.json",
        inputs={
            "test": data["test"][0],
            "test_csv": data["test"][1],
            "train_clean": data["train"][0],
            "train_clean_csv": data["train"][1],
        },
        out_json=cell / "evaluation.json",
        device="cpu",
        bootstrap=0,
    )
    audit = result["audit"]["canaries"]
    assert (audit["canaries"], audit["guesses_in"], audit["guesses_out"]) == (160, 8, 8)
    if memorises:
        assert audit["correct"] >= 14 and audit["epsilon_lb"] > 0.5  # 16 of 16 right here: 1.53
    else:
        assert audit["epsilon_lb"] < 0.2  # 8 of 16 here: 0
    assert audit["epsilon_lb"] <= audit["epsilon_ceiling"]


def test_the_membership_audits_leave_the_canaries_out(tmp_path):
    """Canaries are audited on their own: the loss and LiRA audits' members are the other training images
    (a left-out canary was never trained on, an included one on a wrong label)."""
    from dpmedbench.results.canaryaudit import ordinary_images as _ordinary_images

    _, manifest = make_split(tmp_path, "train", 6)
    assert _ordinary_images(None, manifest) is None
    assert _ordinary_images({"indices": [1, 4]}, manifest).tolist() == [0, 2, 3, 5]
