"""Downloads against a real HTTP server on loopback, and the Kaggle client's error handling."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
import requests
from dpmedbench.core.errors import ChecksumError, CredentialsError, DownloadError
from dpmedbench.data import kaggle
from dpmedbench.data.download import http_download
from dpmedbench.data.kaggle import kaggle_download

from ..support.http import PAYLOAD, Server


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


SHA = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


def test_plain_download_with_checksums(server, tmp_path):
    dest = http_download(server.url, tmp_path / "a.zip", sha256=SHA, md5=MD5)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "a.zip.part").exists()
    assert "Range" not in server.requests[0]


def test_resume_from_an_earlier_partial_file(server, tmp_path):
    (tmp_path / "a.zip.part").write_bytes(PAYLOAD[:300_000])
    dest = http_download(server.url, tmp_path / "a.zip", sha256=SHA)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[0]["Range"] == "bytes=300000-"


def test_dropped_connections_are_resumed(server, tmp_path, caplog):
    server.drop_after = [200_000, 100_000]
    # A drop loses the chunk being read: progress is kept per chunk (256 KiB by default, 1000 bytes here).
    dest = http_download(server.url, tmp_path / "a.zip", sha256=SHA, backoff=0, chunk_size=1000)
    assert dest.read_bytes() == PAYLOAD
    assert [r.get("Range") for r in server.requests] == [None, "bytes=200000-", "bytes=300000-"]
    assert "resuming" in caplog.text


def test_too_many_drops_keep_the_partial_file_for_later(server, tmp_path):
    server.drop_after = [1000] * 10
    with pytest.raises(DownloadError, match="after 2 retries .* rerun to resume"):
        http_download(server.url, tmp_path / "a.zip", retries=2, backoff=0, chunk_size=1000)
    assert (tmp_path / "a.zip.part").stat().st_size == 3000
    assert not (tmp_path / "a.zip").exists()


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    server.honour_range = False
    (tmp_path / "a.zip.part").write_bytes(b"stale bytes from another file")
    dest = http_download(server.url, tmp_path / "a.zip", sha256=SHA)
    assert dest.read_bytes() == PAYLOAD


def test_complete_partial_file_is_accepted(server, tmp_path):
    (tmp_path / "a.zip.part").write_bytes(PAYLOAD)
    assert http_download(server.url, tmp_path / "a.zip", sha256=SHA).read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    with pytest.raises(ChecksumError, match=f"sha256 is {SHA}, expected {'0' * 64}"):
        http_download(server.url, tmp_path / "a.zip", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ChecksumError, match="md5 is"):
        http_download(server.url, tmp_path / "a.zip", md5="f" * 32)


def test_existing_file_is_verified_not_downloaded_again(server, tmp_path):
    (tmp_path / "a.zip").write_bytes(PAYLOAD)
    http_download(server.url, tmp_path / "a.zip", sha256=SHA)
    assert server.requests == []
    (tmp_path / "a.zip").write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match="delete the file to download it again"):
        http_download(server.url, tmp_path / "a.zip", sha256=SHA)


def test_http_errors_are_named(server, tmp_path):
    server.status = 404
    with pytest.raises(DownloadError, match=r"ChestXRay2017.zip: HTTP 404"):
        http_download(server.url, tmp_path / "a.zip")


# ------------------------------------------------------------------------------------------------ Kaggle
@pytest.fixture
def no_kaggle_credentials(monkeypatch, tmp_path):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / ".kaggle"))


def test_missing_kaggle_credentials_say_what_to_do(no_kaggle_credentials, tmp_path):
    with pytest.raises(CredentialsError) as err:
        kaggle_download("aptos", tmp_path / "out")
    msg = str(err.value)
    assert msg.startswith("aptos: no Kaggle credentials found")
    assert "kaggle.com/settings" in msg and "KAGGLE_USERNAME" in msg and "source: local" in msg
    assert not (tmp_path / "out").exists()


def _http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} Client Error", response=response)


@pytest.mark.parametrize(
    ("dataset", "status", "message"),
    [
        (
            "aptos",
            403,
            r"accept the competition rules at https://www.kaggle.com/competitions/"
            r"aptos2019-blindness-detection/rules",
        ),
        ("aptos", 401, "Kaggle rejected the credentials"),
        ("chest_xray", 404, "Kaggle has no dataset paultimothymooney/chest-xray-pneumonia"),
        ("chest_xray", 500, "Kaggle download of paultimothymooney/chest-xray-pneumonia failed"),
    ],
)
def test_kaggle_http_errors_are_explained(dataset, status, message, tmp_path):
    def client(handle, output_dir):
        raise _http_error(status)

    with pytest.raises(DownloadError, match=message):
        kaggle_download(dataset, tmp_path, client=client)


def test_kaggle_download_uses_the_right_handle_and_folder(tmp_path):
    calls = []

    def client(handle, output_dir):
        calls.append((handle, output_dir))
        return output_dir

    assert kaggle_download("chest_xray", tmp_path / "k", client=client) == tmp_path / "k"
    assert calls == [("paultimothymooney/chest-xray-pneumonia", str(tmp_path / "k"))]
    assert kaggle.KAGGLE["aptos"] == ("competition", "aptos2019-blindness-detection")


def test_weights_offline_say_how_to_run_without_them(tmp_path):
    """No network: the weights rule fails fast and names the two ways out (a local file, no pretraining)."""
    import socket

    from dpmedbench.data.weights import WeightsError, fetch_weights

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(WeightsError) as info:
        fetch_weights(url=f"http://127.0.0.1:{port}/resnet18-f37072fd.pth", dest=tmp_path / "w.pth", backoff=0)
    assert "model.weights: <its path>" in str(info.value) and "model.pretrained: false" in str(info.value)
    assert not (tmp_path / "w.pth").exists()
