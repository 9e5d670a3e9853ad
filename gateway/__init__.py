"""The HTTP service, in rooms by concern (see each sub-package's docstring for what it may import)."""

__version__ = "0.1.0"
