"""The problem code registry is the one source: README's table, the source tree and the exception tree agree with it."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import subprocess
from pathlib import Path

import pytest

from schemas.errors import MsjxError
from schemas.problems import ProblemCode
from scripts import problem_codes

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "adapters", "security", "schemas")
VALUES = {code.value for code in ProblemCode}


def _sources() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", *(f"{p}/*.py" for p in PACKAGES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [ROOT / name for name in listed if "migrations/versions" not in name]


def _docstrings(tree: ast.AST) -> set[int]:
    """Docstrings, and the names in `__all__` (a function may be named as a code is: `audit_unavailable`)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            found.update(id(item) for item in ast.walk(node.value) if isinstance(item, ast.Constant))
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def test_readme_table_is_the_registry() -> None:
    assert problem_codes.main(["--check"]) == 0, "run python -m scripts.problem_codes"
    # Both directions, read back from the README itself: each code under each of its statuses, and nothing else.
    section = problem_codes.current_section((ROOT / "README.md").read_text(encoding="utf-8"))
    listed: dict[str, set[str]] = {}
    for row in section.splitlines()[2:]:
        status, codes = (cell.strip() for cell in row.strip("|").split("|"))
        for code in re.findall(r"`([a-z0-9_]+)`", codes):
            listed.setdefault(code, set()).add(status)
    assert set(listed) == VALUES
    for code in ProblemCode:
        expected = {str(s) for s in code.statuses} if len(code.statuses) < problem_codes.ANY_STATUS else None
        assert expected is None or listed[code.value] == expected, code


def test_codes_are_unique_and_well_formed() -> None:
    assert len(ProblemCode.__members__) == len(ProblemCode), "two names share one code (an alias)"
    for code in ProblemCode:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", code.value) and code.name == code.value.upper(), code
        assert code.status in code.statuses and all(400 <= s <= 599 for s in code.statuses), code
        assert code.title, code


def test_sharing_docs_name_only_registered_codes() -> None:
    text = (ROOT / "docs" / "sharing.md").read_text(encoding="utf-8")
    table = text[text.index("## Problem codes") :].split("\n\n")[1]
    named = set(re.findall(r"`([a-z][a-z0-9_]+)`", table))
    assert named and named <= VALUES, named - VALUES


def test_no_bare_code_strings_and_no_unknown_members() -> None:
    """A code is written `ProblemCode.X`: a string spelling one is a code that escaped the registry, and an `X` that
    is no member is a typo that would fail only when that line runs."""
    bare, unknown = [], []
    for path in _sources():
        if path == ROOT / "schemas" / "problems.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = _docstrings(tree)
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if node.value in VALUES:
                    bare.append(f"{where}:{node.lineno}: {node.value!r}")
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "ProblemCode"
                and not hasattr(ProblemCode, node.attr)
            ):
                unknown.append(f"{where}:{node.lineno}: ProblemCode.{node.attr}")
    assert not bare, "use ProblemCode members:\n" + "\n".join(bare)
    assert not unknown, "\n".join(unknown)


# Helpers that answer every code they are given with one status: the code must list that status.
HELPER_STATUS = {
    "invalid": (1, 422),
    "forbidden": (0, 403),
    "add": (1, 422),
    "fault": (1, 422),
    "Faults": (1, 422),
    "_grant_problem": (1, 422),
    "_query_problem": (1, 422),
    "_commit": (1, 422),
    "_refuse": (0, 401),
    "SignatureFailure": (0, 401),
    "ended_problem": (0, 403),
    "QuotaExceeded": (0, 429),
    "Dependency": (1, 503),
}


def _member(node: ast.expr) -> ProblemCode | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ProblemCode":
        return getattr(ProblemCode, node.attr, None)
    return None


def test_every_code_is_answered_with_a_status_it_lists() -> None:
    """`Problem(code, status=...)` raises for a status the code does not list: find those before they run."""
    wrong = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name == "Problem" and node.args and (code := _member(node.args[0])) is not None:
                status = next((kw.value for kw in node.keywords if kw.arg == "status"), None)
                if isinstance(status, ast.Constant) and status.value not in code.statuses:
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {code} with {status.value}")
            elif name in HELPER_STATUS:
                index, expected = HELPER_STATUS[name]
                code = _member(node.args[index]) if index < len(node.args) else None
                if code is not None and expected not in code.statuses:
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name} answers {code} with {expected}")
    assert not wrong, "\n".join(wrong)


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            if ".migrations" in info.name or info.name.endswith("__main__"):
                continue
            names.append(info.name)
    return names


def test_every_exception_is_an_msjx_error() -> None:
    strays = []
    for name in _modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, BaseException) and not issubclass(cls, MsjxError):
                strays.append(f"{name}.{cls.__qualname__}")
    assert not strays, "derive these from schemas.errors.MsjxError: " + ", ".join(strays)


@pytest.mark.parametrize("code", [ProblemCode.NO_GRANT, ProblemCode.PAYMENT_PENDING])
def test_a_problem_takes_its_status_and_title_from_the_code(code: ProblemCode) -> None:
    from gateway.http.problems import Problem

    problem = Problem(code, "detail")
    assert (problem.status, problem.title, problem.to_dict()["code"]) == (code.status, code.title, code.value)
    with pytest.raises(ValueError, match="answered with"):
        Problem(code, "detail", status=418)
