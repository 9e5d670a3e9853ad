"""docs/deploy.md's systemd unit: systemd's own checker finds nothing in it, and what `systemctl reload` and
`systemctl stop` send (its ExecReload, then its KillSignal) leaves a one-worker `serve` serving, then drains it.

The unit is read from the document, so the page cannot drift from what is tested. No systemd runs here as PID 1, so
the signals are sent the way the unit's lines say, to the command its ExecStart gives.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers.processes import CLI, stop, wait_ready
from tests.helpers.services import REQUIRE_SERVICES, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTED_CLI = "/srv/msjx/.venv/bin/msjx-gateway"


def unit_text() -> str:
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```ini\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1, "docs/deploy.md has exactly one ini block: the unit this test checks"
    return blocks[0]


def directive(unit: str, name: str) -> str:
    values = re.findall(rf"^{name}=(.*)$", unit, flags=re.MULTILINE)
    assert len(values) == 1, f"the unit sets {name} once"
    return values[0]


def local_unit(unit: str, root: Path) -> str:
    """The unit with its paths moved under `root` and its command the installed one, as an operator's would be."""
    (root / "var").mkdir()
    (root / "msjx-gateway.env").write_text("")
    for old, new in {
        DOCUMENTED_CLI: CLI,
        "/etc/msjx-gateway.env": str(root / "msjx-gateway.env"),
        "/srv/msjx/var": str(root / "var"),
        "WorkingDirectory=/srv/msjx": f"WorkingDirectory={root}",
    }.items():
        assert old in unit, f"docs/deploy.md's unit no longer has {old!r}"
        unit = unit.replace(old, new)
    return unit


def test_systemd_analyze_finds_nothing_in_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        message = "systemd-analyze is not installed (scripts/run-tests.sh installs Debian's systemd package)"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    path = tmp_path / "msjx-gateway.service"
    path.write_text(local_unit(unit_text(), tmp_path))
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    # systemd-analyze exits 0 on an unknown key or a bad value too, and says so: any output is a finding.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
    # A mistake it would catch, so that the check above is not vacuous.
    broken = path.read_text().replace("TimeoutStopSec=30s", "TimeoutStopSec=30x")
    path.write_text(broken)
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert "Failed to parse" in result.stdout + result.stderr


def test_reload_keeps_a_one_worker_serve_serving_and_stop_drains_it(tmp_path: Path) -> None:
    unit = local_unit(unit_text(), tmp_path)
    command = shlex.split(directive(unit, "ExecStart"))
    assert command[:2] == [CLI, "serve"] and "--workers" not in command, "the documented unit runs one worker"
    port = free_port()
    command[command.index("--port") + 1] = str(port)
    env = {key: value for key, value in os.environ.items() if not key.startswith("MSJX_")}
    env["MSJX_DATA_DIR"] = str(tmp_path / "var")
    log_path = tmp_path / "gateway.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=directive(unit, "WorkingDirectory"), env=env, stdout=log, stderr=subprocess.STDOUT, text=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process, log_path)
        reload = shlex.split(directive(unit, "ExecReload").replace("$MAINPID", str(process.pid)))
        assert reload[1:] == ["-HUP", str(process.pid)]
        subprocess.run(reload, check=True, timeout=10)
        # SIGHUP's default action would have ended it at once, without draining.
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        assert process.poll() is None
        assert "SIGHUP ignored: one worker has no supervisor to restart it in place" in log_path.read_text()

        kill_signal = getattr(signal, directive(unit, "KillSignal"))
        process.send_signal(kill_signal)
        timeout = float(directive(unit, "TimeoutStopSec").removesuffix("s"))
        # Exit 0, as `serve --workers N` does: systemd counts 143 (128 + SIGTERM) as a failed stop.
        assert process.wait(timeout=timeout) == 0
        assert "Application shutdown complete." in log_path.read_text()
    finally:
        stop(process)
