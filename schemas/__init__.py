"""Canonical data: identifiers, upstream records and API bodies (pydantic); imports nothing project-local."""
