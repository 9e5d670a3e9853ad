"""The HTTP service: settings, storage, the request pipeline, routes, CLI and the Python client."""

__version__ = "0.1.0"
