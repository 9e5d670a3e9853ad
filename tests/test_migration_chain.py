"""The migrations form one line: one head, each revision's file named by its id, each following the one before.

Parallel branches each add a migration; two revisions with one id, or two heads, break `db upgrade` for
everyone, and only show when someone upgrades. This catches it on every run.
"""

from __future__ import annotations

from pathlib import Path

from alembic.script import ScriptDirectory

from gateway.settings import load_settings
from gateway.storage.db import MIGRATIONS_DIR, alembic_config


def test_one_head_and_one_line_of_numbered_revisions(tmp_path: Path) -> None:
    scripts = ScriptDirectory.from_config(alembic_config(load_settings(data_dir=tmp_path)))
    assert len(scripts.get_heads()) == 1, scripts.get_heads()
    revisions = list(reversed(list(scripts.walk_revisions())))
    files = sorted(path.name for path in (MIGRATIONS_DIR / "versions").glob("[0-9]*.py"))
    assert len(files) == len(revisions), "a migration file is not in the chain"
    for number, (revision, file) in enumerate(zip(revisions, files, strict=True), start=1):
        assert revision.revision == f"{number:04d}", (revision.revision, file)
        assert file.startswith(f"{revision.revision}_"), file
        assert revision.down_revision == (None if number == 1 else f"{number - 1:04d}")
