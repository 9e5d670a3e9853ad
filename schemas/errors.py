"""The root of every exception the project raises, so one `except MsjxError` tells ours from a library's bug."""

from __future__ import annotations

__all__ = ["MsjxError"]


class MsjxError(Exception):
    """Base of every exception defined in gateway/, adapters/, security/ and schemas/.

    It lives in `schemas` because that package imports nothing project-local and every other package may import it.
    Subclasses that callers or pydantic catch as ValueError keep ValueError as a second base.
    """
