"""Route handlers and the console get the few services they use (gateway/api/deps.py), never the whole Runtime:
only the modules that build it and hand it out read `app.state.runtime`. import-linter cannot see attribute reads."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "gateway"
ALLOWED = {"app.py", "runtime.py", "api/deps.py"}
READ = re.compile(r"\bstate\.runtime\b")


def test_only_the_app_and_the_dependencies_read_the_runtime_from_app_state() -> None:
    readers = {
        path.relative_to(ROOT).as_posix()
        for path in ROOT.rglob("*.py")
        if READ.search(path.read_text(encoding="utf-8"))
    }
    assert readers, "the app keeps its Runtime on app.state: the pattern must find that much"
    assert readers <= ALLOWED, sorted(readers - ALLOWED)
