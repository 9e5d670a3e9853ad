"""Who may call what: every route of the OpenAPI with the roles its role gate lets through.

The role matrix test (tests/test_role_matrix.py) checks each route against this table for every role and for an
unsigned caller, and fails on a route that has no row; the API fuzzer (tests/fuzz_hooks.py) signs as these roles.
A role let through may still be refused for what it asks (no grant, not the provider department): that is
object-level, decided by the handler, and tested where the feature is.
"""

from __future__ import annotations

ROLES = ("platform", "department", "officer", "coordinator", "admin")
UNSIGNED = "unsigned"

ANY_SIGNED = frozenset(ROLES)
PUBLIC = frozenset((*ROLES, UNSIGNED))
ADMIN = frozenset({"admin"})
OFFICER = frozenset({"officer"})
SHARING_READERS = frozenset({"department", "officer", "admin", "coordinator"})

# (method, OpenAPI path) -> who passes the role gate ("unsigned": no signature needed).
ACCESS: dict[tuple[str, str], frozenset[str]] = {
    ("POST", "/v1/services/{service}/{operation}"): ANY_SIGNED,
    ("GET", "/v1/services"): ANY_SIGNED,
    ("POST", "/v1/batches"): frozenset({"platform"}),
    ("GET", "/v1/batches/{batch_id}"): frozenset({"platform"}),
    ("GET", "/v1/batches/{batch_id}/results"): frozenset({"platform"}),
    ("DELETE", "/v1/batches/{batch_id}"): frozenset({"platform"}),
    ("GET", "/v1/catalog"): PUBLIC,
    ("POST", "/v1/catalog"): frozenset({"department", "admin"}),
    ("GET", "/v1/catalog/{item_id}"): PUBLIC,
    ("PATCH", "/v1/catalog/{item_id}"): frozenset({"department", "admin"}),
    ("POST", "/v1/sharing-requests"): frozenset({"department"}),
    ("GET", "/v1/sharing-requests"): SHARING_READERS,
    ("GET", "/v1/sharing-requests/{request_id}"): SHARING_READERS,
    ("PATCH", "/v1/sharing-requests/{request_id}"): SHARING_READERS,
    ("POST", "/v1/sharing-requests/{request_id}/endorse"): SHARING_READERS,
    ("POST", "/v1/sharing-requests/{request_id}/approve"): SHARING_READERS,
    ("POST", "/v1/sharing-requests/{request_id}/refuse"): SHARING_READERS,
    ("POST", "/v1/sharing-requests/{request_id}/return"): SHARING_READERS,
    ("POST", "/v1/sharing-requests/{request_id}/extend"): SHARING_READERS,
    ("POST", "/v1/sharing-requests/{request_id}/revoke"): SHARING_READERS,
    ("POST", "/v1/sharing-requests/{request_id}/deliver"): SHARING_READERS,
    ("GET", "/v1/calendar/deadline"): PUBLIC,
    ("POST", "/v1/calendar/schedules"): ADMIN,
    ("GET", "/v1/calendar/years"): ADMIN,
    ("GET", "/v1/calendar/years/{year}"): ADMIN,
    ("GET", "/v1/callers"): ADMIN,
    ("POST", "/v1/callers"): ADMIN,
    ("POST", "/v1/callers/{caller_id}/keys"): ADMIN,
    ("POST", "/v1/callers/{caller_id}/keys/{key_id}/revoke"): ADMIN,
    ("GET", "/v1/grants"): ANY_SIGNED,
    ("POST", "/v1/grants"): ADMIN,
    ("GET", "/v1/grants/{grant_id}"): ANY_SIGNED,
    ("POST", "/v1/grants/{grant_id}/revoke"): ADMIN,
    ("POST", "/v1/grants/{grant_id}/suspend"): frozenset({"department", "admin"}),
    ("POST", "/v1/grants/{grant_id}/resume"): frozenset({"department", "admin"}),
    ("POST", "/v1/grants/{grant_id}/register"): frozenset({"department"}),
    ("GET", "/v1/grants/{grant_id}/register"): frozenset({"department", "officer", "admin"}),
    ("GET", "/v1/upstreams"): ADMIN,
    ("POST", "/v1/upstreams"): ADMIN,
    ("DELETE", "/v1/upstreams/{name}"): ADMIN,
    ("GET", "/v1/audit/records"): OFFICER,
    ("GET", "/v1/audit/records/{record_id}"): OFFICER,
    ("POST", "/v1/audit/records/{record_id}/payload"): OFFICER,
    ("GET", "/v1/audit/verify"): OFFICER,
    ("GET", "/v1/audit/checkpoints"): OFFICER,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
}


def allowed(method: str, path: str) -> frozenset[str]:
    """The row for a route; KeyError names a route the table lacks."""
    try:
        return ACCESS[(method.upper(), path)]
    except KeyError:
        raise KeyError(
            f"{method.upper()} {path} has no row in tests/helpers/api_access.py: say who may call it"
        ) from None
