"""Logging for Snakemake scripts: everything into the rule's ``log:`` file, errors also on stderr."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import DPMedBenchError

T = TypeVar("T")


def run_logged(log_path: str, fn: Callable[..., T], /, **kwargs: Any) -> T:
    """Call ``fn(**kwargs)`` with logging sent to ``log_path``.

    A :class:`DPMedBenchError` (bad input, missing credentials, ...) is logged and shown as one clear line
    and the process exits with status 1; anything else keeps its traceback.
    """
    handler = logging.FileHandler(log_path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        return fn(**kwargs)
    except DPMedBenchError as exc:
        logging.getLogger("dpmedbench").error("%s", exc)
        print(f"dp-medbench error: {exc}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        logging.getLogger("dpmedbench").exception("unexpected failure: %s: %s", type(exc).__name__, exc)
        raise
    finally:
        root.removeHandler(handler)
        handler.close()
