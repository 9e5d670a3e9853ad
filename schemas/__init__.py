"""Canonical data of the gateway: identifiers, upstream records and API bodies (pydantic); imports nothing project-local."""
