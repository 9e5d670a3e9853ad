"""`msjx-gateway demo`: both demo policies run by the simulated platform against a `serve --demo`, then the audit check.

It uses the gateway given by --url, else the one serving its data directory (found by the directory's lock), else
starts one (and stops it at the end). A second run pays nobody
again: every payment is answered from the gateway's idempotency store, and the tables say so.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from gateway.settings import Settings
from schemas.errors import MsjxError

Echo = Callable[[str], None]


class DemoError(MsjxError):
    """The demo cannot run; the message says what to do."""


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def running_target(data_dir: Path, echo: Echo, wait: float = 90) -> str | None:
    """The URL of the gateway serving this data directory (found by its lock), once it is ready; None if none runs."""
    from gateway.server.datadir_lock import running_gateway

    deadline = time.monotonic() + wait
    holder = running_gateway(data_dir)
    if holder is None:
        return None
    echo(f"using {holder.describe()}, which serves this data dir ({data_dir})")
    while time.monotonic() < deadline:
        if holder.port and _ready(holder.url):
            return holder.url
        time.sleep(0.2)
        holder = running_gateway(data_dir)
        if holder is None:
            return None  # it stopped while starting: start our own
    raise DemoError(f"{holder.describe()} holds {data_dir} but did not become ready within {wait:.0f} s")


def start_server(data_dir: Path, echo: Echo) -> tuple[subprocess.Popen[str], str]:
    """`serve --demo` in a child process on a free port, with the same data directory; returns it once ready."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    echo(f"no gateway serves {data_dir}; starting `serve --demo` on {url} (stopped at the end)")
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "gateway.cli", "serve", "--demo", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            detail = process.stderr.read()[-2000:] if process.stderr else ""
            raise DemoError(f"`serve --demo` exited with {process.returncode}: {detail}")
        if _ready(url):
            return process, url
        time.sleep(0.2)
    stop_server(process)
    raise DemoError("`serve --demo` did not become ready within 90 s")


def stop_server(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def platform_identity(data_dir: Path) -> dict[str, Any]:
    listing = data_dir / "demo" / "callers.json"
    if not listing.exists():
        raise DemoError(f"{listing} is missing: run `msjx-gateway serve --demo --data-dir {data_dir}` once first")
    callers = json.loads(listing.read_text())
    return next(entry for entry in callers if "platform" in entry["roles"])


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def render_report(report: Any, echo: Echo) -> None:
    echo("")
    echo(f"{report.kind} {report.code}  {report.title}")
    if report.skipped:
        echo(f"  skipped: {report.skipped}")
        return
    if report.list_errors:
        echo(f"  list refused, nothing paid: {len(report.list_errors)} error(s), every one at once (一次性告知):")
        for error in report.list_errors:
            echo(f"    {error}")
        return
    seconds = getattr(report, "comparison_seconds", None)
    if seconds is not None:
        how = f"one batch {report.batch_id} (批量交换)" if report.batch_id else "single calls"
        echo(f"  数据比对 of {report.compared} enterprises by {how}: {seconds:.1f} s")
    headers = ("compared", "eligible", "confirmed", "paid", "already paid", "refused", "total paid (¥)")
    values = (
        report.compared,
        report.eligible,
        report.confirmed,
        report.paid,
        report.already_paid,
        sum(report.refused.values()),
        f"{report.total:,.2f}",
    )
    widths = [max(len(h), len(str(v))) for h, v in zip(headers, values, strict=True)]
    echo("  " + "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    echo("  " + "  ".join(str(v).rjust(w) for v, w in zip(values, widths, strict=True)))
    if report.refused:
        echo("  refused, with reasons:")
        width = max(_width(reason) for reason in report.refused)
        for reason, count in report.refused.most_common():
            echo(f"    {_pad(reason, width)}  {count}")
    if report.already_paid and not report.paid:
        echo(
            f"  nobody paid again: {report.already_paid} payment(s) made by an earlier run were answered from the"
            " gateway's idempotency store (Idempotent-Replayed); the treasury was not asked to pay them again"
        )
    elif report.already_paid:
        echo(f"  {report.already_paid} paid by an earlier run (not paid again), {report.paid} paid now")
    if report.publicity:
        echo(f"  公示 (publicity list): {report.publicity}")


async def _verify(settings: Settings) -> list[Any]:
    from gateway.audit.verify import verify_all
    from gateway.storage import db

    engine = db.create_engine(settings)
    try:
        return await verify_all(engine)
    finally:
        await engine.dispose()


def run_demo(settings: Settings, url: str | None, echo: Echo) -> int:
    """Run both policies and verify the audit chain; returns the exit status (1 if the chain does not verify)."""
    from gateway.client import GatewayClient
    from simulators.platform import CONDITION_POLICY, LIST_POLICY, run_condition_policy, run_list_policy

    data_dir = settings.data_dir
    server = None
    if url is not None:
        if not _ready(url):
            raise DemoError(f"no gateway is ready at {url}; start one with `msjx-gateway serve --demo` or omit --url")
        target = url
    else:
        # Never a second gateway on this data dir: it would append to the running one's audit chain.
        found = running_target(data_dir, echo)
        if found is None:
            server, found = start_server(data_dir, echo)
        target = found
    try:
        platform = platform_identity(data_dir)
        out_dir = data_dir / "demo" / "publicity"
        echo(f"免申即享 demo against {target} as caller {platform['caller_id']} ({platform['key_id']})")
        echo("数据比对 → 意愿确认 → 政策兑现 → 公示, every call signed, granted, minimized and audited by the gateway")
        started = time.monotonic()
        with GatewayClient.from_key_file(target, platform["caller_id"], platform["key_file"], timeout=60) as client:
            draft = run_list_policy(client, LIST_POLICY, out_dir, list_file=LIST_POLICY.draft_file)
            echo("")
            echo(f"名单类 {LIST_POLICY.code}: the department's draft list {LIST_POLICY.draft_file.name} first")
            if draft.list_errors:
                echo(f"  refused, nothing paid: {len(draft.list_errors)} error(s):")
                for error in draft.list_errors:
                    echo(f"    {error}")
            reports = [
                run_list_policy(client, LIST_POLICY, out_dir),
                run_condition_policy(client, CONDITION_POLICY, out_dir),
            ]
        for report in reports:
            render_report(report, echo)
        ran = [report for report in reports if not report.skipped and not report.list_errors]
        new = sum(report.paid for report in ran)
        old = sum(report.already_paid for report in ran)
        echo("")
        if new == 0 and old > 0:
            echo(f"This run paid nobody: all {old} payments were made by an earlier run, and none was made twice.")
        else:
            echo(f"This run paid {new} enterprise(s); {old} had been paid by an earlier run and were not paid again.")
        echo(f"({time.monotonic() - started:.1f} s)")
        reports_ok = True
        echo("")
        echo("audit chain:")
        chains = asyncio.run(_verify(settings))
        if not chains:
            echo("  no audit records found (is the gateway using another database?)")
            reports_ok = False
        for chain in chains:
            if chain.ok:
                echo(f"  chain {chain.chain_id}: {chain.records} records intact, head {chain.head_hash[:16]}…")
            else:
                reports_ok = False
                echo(f"  FAILED {chain.fault}")
        return 0 if reports_ok else 1
    finally:
        if server is not None:
            stop_server(server)
