"""Sample a running server with py-spy and say where its CPU goes: top functions by own and by inclusive time.

Used by `python -m bench --profile SCENARIO` (py-spy must be installed: `.venv/bin/pip install py-spy`).
The collapsed stacks are kept beside the summary, for flame graphs (e.g. speedscope, inferno).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.procs import ROOT

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# Leaves where py-spy samples a thread that only waits (aiosqlite's worker blocked on its queue).
IDLE_LEAVES = ("_connection_worker_thread (aiosqlite/core.py:59)",)
# Samples a second. py-spy stops the process for each sample, and the stopped time is neither running nor waiting
# for a CPU, so the loop looks idler to the signature offload rule (gateway/pipeline/loop_load.py): at 250 Hz a
# full-load run sent 22 % of its checks to the verifier process against 97 % unprofiled, and the loop's profile
# showed the checks made on it; at 100 Hz 88 % went (docs/performance.md, "The profiler's own pauses").
RATE = 100
# The main thread's stacks start here (py-spy writes the outermost frame first); a worker of `serve --workers N`
# starts in multiprocessing's spawn_main.
MAIN_ROOTS = ("_run_module_as_main", "spawn_main", "<module>")
# A sample belongs to the first component met walking from the leaf towards the root.
COMPONENTS = (
    ("signature check (security/signatures.py)", "security/signatures.py"),
    (
        "authentication: key, nonce (gateway/access/authenticate.py, nonces.py)",
        ("gateway/access/authenticate.py", "gateway/access/nonces.py", "redis/"),
    ),
    ("quotas (gateway/access/quotas.py)", ("gateway/access/quotas.py", "limits/")),
    ("audit: build, chain, commit (gateway/audit/)", ("gateway/audit/", "security/audit_chain.py", "security/crypto")),
    ("audit: SQLite thread", "_connection_worker_thread"),
    ("database drivers (sqlalchemy, aiosqlite, asyncpg)", ("sqlalchemy/", "aiosqlite/", "asyncpg/")),
    ("directory snapshot (gateway/access/directory.py)", "gateway/access/directory.py"),
    (
        "adapter: upstream client (adapters/wire.py, httptools, yarl; aiohttp, pyreqwest)",
        ("adapters/wire.py", "httptools/", "pyreqwest/", "aiohttp/", "yarl/", "multidict/"),
    ),
    ("adapter: translation, validation (adapters/, schemas/)", ("adapters/", "schemas/")),
    ("invoke route (gateway/api/services.py)", "gateway/api/services.py"),
    ("exchange (gateway/pipeline/, gateway/http/)", ("gateway/pipeline/", "gateway/http/")),
    ("metrics (gateway/metrics.py, prometheus_client)", ("gateway/metrics.py", "prometheus_client/")),
    ("HTTP bounds (gateway/server/protocol.py)", "gateway/server/protocol.py"),
    ("app dispatch (gateway/app.py)", "gateway/app.py"),
    ("pydantic", "pydantic"),
    ("FastAPI", "fastapi/"),
    ("Starlette", "starlette/"),
    ("uvicorn (HTTP server)", "uvicorn/"),
    ("event loop (uvloop)", "Runner.run"),
)


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    tool = py_spy()
    if tool is None:
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
    command = [tool, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(RATE)]
    command += ["--format", "raw", "--output", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", f"{ROOT}/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['function']} ({path})"


def _component(raw_frames: list[str]) -> str:
    for frame in reversed(raw_frames):
        for label, markers in COMPONENTS:
            if any(marker in frame for marker in ((markers,) if isinstance(markers, str) else markers)):
                return label
    return "other"


def summarize(collapsed: Path, top: int = 25) -> str:
    """Markdown: share of busy samples per component, and per function by own time and including callees."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    components: Counter[str] = Counter()
    total = others = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        raw = [frame for frame in stack.split(";") if frame]
        if not raw or raw[-1].strip() in IDLE_LEAVES:
            continue
        if not any(root in raw[0] for root in MAIN_ROOTS):  # another thread: not the event loop that caps a worker
            others += count
            continue
        frames = [_short(frame) for frame in raw]
        components[_component(raw)] += count
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples\n"
    lines = [
        f"{total} busy samples of the main thread, the event loop ({RATE} Hz);"
        f" {others} more in other threads, not below",
        "",
    ]
    lines += ["| share % | component (the first met from the leaf) |", "| ---: | --- |"]
    lines += [f"| {100 * n / total:.1f} | {name} |" for name, n in components.most_common()]
    lines += ["", "| own % | function |", "| ---: | --- |"]
    lines += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in own.most_common(top)]
    lines += ["", "| inclusive % | function |", "| ---: | --- |"]
    lines += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in inclusive.most_common(top * 2)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25))
