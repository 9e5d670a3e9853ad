"""Every console page on one router: importing the role modules registers their routes on `web.router`."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.console import admin, auditor, officer, operator, web
from gateway.console.session import ConsoleState

__all__ = ["ConsoleState", "router"]

# The role modules are imported for their routes.
_ROOMS = (admin, auditor, officer, operator)
router: APIRouter = web.router
