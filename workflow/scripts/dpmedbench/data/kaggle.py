"""Kaggle archives through the official ``kagglehub`` client, with credentials checked before any network
access and HTTP errors turned into instructions."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import requests

from ..core.errors import CredentialsError, DownloadError

log = logging.getLogger(__name__)

KAGGLE = {
    "chest_xray": ("dataset", "paultimothymooney/chest-xray-pneumonia"),
    "aptos": ("competition", "aptos2019-blindness-detection"),
}

_NO_CREDENTIALS = (
    "no Kaggle credentials found. Create an API token on https://www.kaggle.com/settings (section 'API'), "
    "then either save it as ~/.kaggle/access_token (or the legacy kaggle.json as ~/.kaggle/kaggle.json, "
    "chmod 600), or export KAGGLE_API_TOKEN, or KAGGLE_USERNAME and KAGGLE_KEY. On a cluster, fetch on a "
    "login node: download rules run locally. Or download the archive yourself and use source: local."
)


def kaggle_download(
    dataset: str, output_dir: str | os.PathLike[str], *, client: Callable[..., str] | None = None
) -> Path:
    """Download a dataset's Kaggle archive with ``kagglehub`` into ``output_dir`` (extracted).

    Credentials are checked before any network access; HTTP 401/403/404 answers are turned into errors
    that say what to do (for APTOS, 403 almost always means the competition rules were not accepted).
    ``client`` replaces the kagglehub download function (tests).
    """
    kind, handle = KAGGLE[dataset]
    import kagglehub
    from kagglehub.config import get_kaggle_credentials

    if client is None:
        if get_kaggle_credentials() is None:
            raise CredentialsError(f"{dataset}: {_NO_CREDENTIALS}")
        client = kagglehub.competition_download if kind == "competition" else kagglehub.dataset_download
    page = f"https://www.kaggle.com/{'competitions' if kind == 'competition' else 'datasets'}/{handle}"
    log.info("downloading Kaggle %s %s into %s", kind, handle, output_dir)
    try:
        path = client(handle, output_dir=str(output_dir))
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise CredentialsError(f"{dataset}: Kaggle rejected the credentials (HTTP 401). {_NO_CREDENTIALS}") from exc
        if status == 403:
            hint = (
                f"accept the competition rules at {page}/rules while logged in with the account of your API "
                f"token, then rerun"
                if kind == "competition"
                else f"check that {page} is visible to your account"
            )
            raise CredentialsError(f"{dataset}: Kaggle refused access to {handle} (HTTP 403): {hint}") from exc
        if status == 404:
            raise DownloadError(f"{dataset}: Kaggle has no {kind} {handle} (HTTP 404); see {page}") from exc
        raise DownloadError(f"{dataset}: Kaggle download of {handle} failed: {exc}") from exc
    return Path(path)
