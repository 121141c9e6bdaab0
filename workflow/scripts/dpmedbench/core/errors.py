"""Exceptions with messages meant for the person running the pipeline."""

from __future__ import annotations


class DPMedBenchError(Exception):
    """Base class: the message says what went wrong, where, and what to do."""


class ConfigError(DPMedBenchError):
    """A configuration value is missing, misspelt or out of range."""


class LayoutError(DPMedBenchError):
    """An archive is not laid out as the real dataset is."""


class ImageError(DPMedBenchError):
    """An image cannot be decoded."""


class DownloadError(DPMedBenchError):
    """A download failed, or what arrived is not what was expected."""


class ChecksumError(DownloadError):
    """A file's checksum differs from the expected one."""


class CredentialsError(DownloadError):
    """Credentials are missing, invalid, or lack permission (e.g. unaccepted competition rules)."""


class TrainingError(DPMedBenchError):
    """The data or the settings of a cell cannot be trained on (or evaluated)."""


class DamagedOutputError(DPMedBenchError):
    """An output of the pipeline is damaged (truncated, not what its job writes); rebuilding it is the fix."""


class OutputSpaceError(DPMedBenchError):
    """An output cannot be written: the disk is full, a quota is reached, or the file is larger than allowed."""
