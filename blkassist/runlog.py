"""Glue for rule scripts: log to the rule's log file, report user errors without a traceback."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager

from blkassist.errors import BlkAssistError


@contextmanager
def rule_logging(snakemake):
    """Send logging to the job's log file; turn BlkAssistError into a one-line failure."""
    log_path = snakemake.log[0] if snakemake.log else None
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    for chatty in ("pyvips", "diffusers", "transformers", "PIL", "matplotlib"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        yield logging.getLogger(f"blkassist.rule.{snakemake.rule}")
    except BlkAssistError as error:
        logging.getLogger("blkassist").error("%s", error)
        sys.exit(1)
    except Exception:
        logging.getLogger("blkassist").exception("job failed")
        raise
