"""The HTTP service, in rooms by concern (see each sub-package's docstring for what it may import).

`gateway.clock` (wall time, periodic tasks) imports nothing of the gateway: every room may use it."""

__version__ = "0.1.0"
