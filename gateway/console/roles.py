"""Console roles and 三员分立: each account has one role, acts as one API role, and sees only its own pages."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConsoleRole:
    name: str
    label: str  # Chinese first: the users are Chinese officials
    english: str
    api_role: str | None  # the caller role the account acts as; None: it acts as no caller at all
    home: str


ROLES: dict[str, ConsoleRole] = {
    role.name: role
    for role in (
        ConsoleRole("department", "部门数据专员", "department officer", "department", "/console/requests"),
        # 审计管理员: reads the log, changes neither configuration nor grants.
        ConsoleRole("auditor", "审计管理员", "security officer", "officer", "/console/audit"),
        # 系统管理员: upstreams, callers, keys; never audit payloads.
        ConsoleRole("operator", "系统管理员", "operator", "admin", "/console/upstreams"),
        # 安全管理员: console accounts and their roles, and nothing the other two do.
        ConsoleRole("security_admin", "安全管理员", "security admin", None, "/console/accounts"),
    )
}
ROLE_NAMES = tuple(ROLES)


def role_of(name: str) -> ConsoleRole:
    return ROLES[name]
