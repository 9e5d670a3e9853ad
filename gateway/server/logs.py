"""Logging of a serving process: to stderr, one line a record, with secrets and personal data masked first."""

from __future__ import annotations

import logging
import sys

from security.masking import install_log_masking


def configure_logging(level: str) -> None:
    install_log_masking()
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
