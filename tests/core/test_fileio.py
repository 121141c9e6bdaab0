"""Digests that cannot collide, state files that heal, and damaged outputs that say how to rebuild them."""

from __future__ import annotations

import hashlib
import json

import pytest
from dpmedbench.core.errors import DamagedOutputError
from dpmedbench.core.fileio import TREE_SCHEME, cached_source_digest, read_json, tree_digest


def test_two_different_folders_never_share_a_digest(tmp_path):
    """The old listing (`<sha256>  <path>` lines) let a file whose name holds a newline and a fake line impersonate
    two files: folder a (one file) and folder b (two files) had the same digest."""
    empty = hashlib.sha256(b"").hexdigest()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / f"x\n{empty}  y").write_bytes(b"")
    (b / "x").write_bytes(b""), (b / "y").write_bytes(b"")
    old = lambda root: hashlib.sha256(  # noqa: E731  (the scheme it replaced, for the record)
        "".join(f"{empty}  {p.relative_to(root).as_posix()}\n" for p in sorted(root.rglob("*"))).encode()
    ).hexdigest()
    assert old(a) == old(b)  # the collision the old scheme had
    assert tree_digest(a) != tree_digest(b)


def test_a_damaged_digest_cache_is_rebuilt_with_a_note(tmp_path, caplog):
    folder = tmp_path / "archive"
    folder.mkdir()
    (folder / "img.png").write_bytes(b"x")
    cache = tmp_path / "digests.json"
    for damage in ("[]", "{not json", '{"k": 3}'):
        cache.write_text(damage)
        with caplog.at_level("WARNING"):
            found = cached_source_digest(folder, cache)
        assert found["sha256"] == tree_digest(folder) and "damaged digest cache" in caplog.text
        assert json.loads(cache.read_text())  # rewritten whole
        caplog.clear()


def test_a_cached_folder_digest_of_an_older_scheme_is_recomputed_once(tmp_path, caplog):
    folder = tmp_path / "archive"
    folder.mkdir()
    (folder / "img.png").write_bytes(b"x")
    cache = tmp_path / "digests.json"
    cached_source_digest(folder, cache)
    known = json.loads(cache.read_text())
    key = next(iter(known))
    known[key].update(sha256="0" * 64, scheme="sha256sum listing")  # what an older version cached
    cache.write_text(json.dumps(known))
    with caplog.at_level("WARNING"):
        assert cached_source_digest(folder, cache)["sha256"] == tree_digest(folder)
    assert "older scheme" in caplog.text and json.loads(cache.read_text())[key]["scheme"] == TREE_SCHEME
    caplog.clear()
    cached_source_digest(folder, cache)
    assert "older scheme" not in caplog.text  # once


def test_a_damaged_output_names_itself_and_its_rebuild(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"cell": {"dataset": "aptos", "mech')
    with pytest.raises(DamagedOutputError, match=rf"{metrics}: damaged, not JSON .*snakemake --force {metrics}"):
        read_json(metrics)


def test_a_truncated_cell_record_stops_the_summary_with_its_name(tmp_path):
    """The summary job on a cell whose metrics.json was cut short (a full disk, an interrupted copy)."""
    from dpmedbench.results.summary import write_summary

    metrics, evaluation = tmp_path / "metrics.json", tmp_path / "evaluation.json"
    metrics.write_text('{"cell": {"dataset": "aptos"')
    evaluation.write_text("{}")
    with pytest.raises(DamagedOutputError, match=f"{metrics}: damaged"):
        write_summary(metrics=[metrics], evaluations=[evaluation], out_csv=tmp_path / "summary.csv")
    assert not (tmp_path / "summary.csv").exists()
