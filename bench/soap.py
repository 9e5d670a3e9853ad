"""SOAP path cost: golden-tax through the gateway under wrk (the `soap` row of `make bench`), the same call one at a
time against zeep directly and against the REST path, and the cold registration time of a 50-operation WSDL.

`.venv/bin/python -m bench.soap` (about 60 s; `--quick` about 20 s) writes bench/results/soap.json. `run(quick)`
is what `make bench` calls. Everything runs on 127.0.0.1: `serve --demo` (gateway + simulators in child processes),
zeep's own client (requests) and the adapter's engine (zeep builds and reads, aiohttp carries) against the same
golden-tax simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "soap.json"
CLI = str(Path(sys.executable).parent / "msjx-gateway")
WSDL = ROOT / "schemas" / "contracts" / "golden_tax.wsdl"
OPERATIONS = 50


def _summary(samples: list[float], sequential: bool = True) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "calls": len(ordered),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
        "p50_ms": round(pick(0.50) * 1000, 3),
        "p95_ms": round(pick(0.95) * 1000, 3),
        "p99_ms": round(pick(0.99) * 1000, 3),
        **({"calls_per_s": round(len(ordered) / sum(ordered), 1)} if sequential else {}),
    }


# --- the demo: gateway and simulators ------------------------------------------------------------------------------


def _start_demo(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], dict[str, str], dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSJX_")}
    env["MSJX_LOG_LEVEL"] = "warning"
    process = subprocess.Popen(
        [CLI, "serve", "--demo", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: stopping it stops its simulators too
    )
    assert process.stdout is not None
    simulators: dict[str, str] = {}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("serve --demo exited before it was ready")
        if line.startswith("simulators:"):
            for part in line.removeprefix("simulators:").split(","):
                name, url = part.split()
                simulators[name] = url
        if "msjx-gateway call" in line:
            break
    listing = json.loads((data_dir / "demo" / "callers.json").read_text())
    platform_caller = next(entry for entry in listing if "platform" in entry["roles"])
    import httpx

    for _ in range(200):  # the line is printed before uvicorn listens
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    return process, simulators, platform_caller


def _stop(process: subprocess.Popen[str]) -> None:
    import signal

    try:
        os.killpg(process.pid, signal.SIGTERM)  # the group we started: the gateway and its simulators
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the three ways of making the call ------------------------------------------------------------------------------


def _zeep_direct(simulator_url: str, calls: int, uscc: str) -> list[float]:
    import zeep

    client = zeep.Client(str(WSDL))
    service = client.create_service(
        "{http://www.chinatax.gov.cn/gt3/sjjh/nsrxx/v1}NsrxxSoapBinding", simulator_url + "/sjjh/services/NsrxxService"
    )
    for _ in range(20):
        service.CxNsxydj(NSRSBH=uscc, PJND=(2025, None))
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        answer = service.CxNsxydj(NSRSBH=uscc, PJND=(2025, None))
        samples.append(time.perf_counter() - started)
        assert answer["NSXYDJ"] in "ABMCD"
    client.transport.session.close()
    return samples


async def _timed(call: Callable[[], Awaitable[Any]], calls: int, concurrency: int) -> tuple[list[float], float]:
    for _ in range(20):
        await call()
    samples: list[float] = []
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, time.perf_counter() - started


async def _adapter(simulator_url: str, calls: int, concurrency: int, uscc: str) -> tuple[list[float], float]:
    from adapters.golden_tax import GoldenTaxAdapter
    from schemas.tax import TaxpayerYearQuery

    adapter = GoldenTaxAdapter(simulator_url)
    await adapter.start()
    params = TaxpayerYearQuery(uscc=uscc, year=2025)
    try:
        return await _timed(lambda: adapter.invoke("tax-credit-rating", params), calls, concurrency)
    finally:
        await adapter.close()


async def _gateway(
    url: str,
    caller: dict[str, Any],
    calls: int,
    concurrency: int,
    uscc: str,
    path: str = "/v1/services/golden-tax/tax-credit-rating",
) -> tuple[list[float], float]:
    import httpx

    from gateway.client import SignatureAuth
    from security.keys import load_private_key_file

    auth = SignatureAuth(caller["key_id"], load_private_key_file(Path(caller["key_file"])))
    params: dict[str, Any] = {"uscc": uscc, "year": 2025} if "golden-tax" in path else {"uscc": uscc}
    body = {"purpose": caller["purposes"][0], "params": params}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, auth=auth, limits=limits, timeout=30) as client:

        async def call() -> None:
            response = await client.post(path, json=body)
            if response.status_code != 200:
                raise RuntimeError(f"gateway answered {response.status_code}: {response.text[:200]}")

        return await _timed(call, calls, concurrency)


def _wrk(
    url: str, gateway_pid: int, caller: dict[str, Any], uscc: str, seconds: float, workdir: Path
) -> dict[str, Any]:
    """The same load as the REST scenarios: wrk replaying pre-signed requests (32 connections), the gateway's CPU
    (its process and its audit committer; not the simulators it started) and peak RSS, as bench.harness.figures."""
    import orjson

    from bench import procs
    from bench.harness import figures
    from bench.load import run_wrk
    from bench.presign import Presigner, pool_size
    from security.keys import load_private_key_file

    path = "/v1/services/golden-tax/tax-credit-rating"
    body = orjson.dumps({"purpose": caller["purposes"][0], "params": {"uscc": uscc, "year": 2025}})
    private_key = load_private_key_file(Path(caller["key_file"]))
    signer = Presigner(url.removeprefix("http://"), path, body, caller["key_id"], private_key)
    pids = [gateway_pid, *(pid for pid in procs.child_pids(gateway_pid) if _is_committer(pid))]
    warm = run_wrk(url, seconds=1, connections=32, requests_file=signer.write(workdir / "soap-warm.requests", 6000))
    expected = max(warm.rps, 500.0)
    requests_file = signer.write(workdir / "soap.requests", pool_size(expected, seconds))
    time.sleep(0.5)  # requests cut off by the end of the warm-up drain
    before = procs.cpu_seconds(pids)
    load = run_wrk(url, seconds=seconds, connections=32, requests_file=requests_file)
    after = procs.cpu_seconds(pids)
    cpu = (after[0] - before[0], after[1] - before[1])
    return {**figures(load, cpu, procs.peak_rss_mb(pids)), "how": "wrk, 32 connections, pre-signed requests"}


def _is_committer(pid: int) -> bool:
    try:
        return b"gateway.audit.committer" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


# --- cold registration of a 50-operation WSDL -------------------------------------------------------------------------


def generate_wsdl(operations: int = OPERATIONS) -> str:
    """A document/literal wrapped WSDL with `operations` operations, each with its own request and response types."""
    ns = "urn:bench:fifty"
    elements, messages, port_ops, binding_ops = [], [], [], []
    elements.append(
        '<xsd:simpleType name="Status"><xsd:restriction base="xsd:string">'
        + "".join(f'<xsd:enumeration value="S{i}"/>' for i in range(8))
        + "</xsd:restriction></xsd:simpleType>"
        '<xsd:complexType name="Line"><xsd:sequence><xsd:element name="code" type="xsd:string"/>'
        '<xsd:element name="amount" type="xsd:decimal"/><xsd:element name="day" type="xsd:date" minOccurs="0"/>'
        "</xsd:sequence></xsd:complexType>"
    )
    for i in range(operations):
        name = f"Operation{i:02d}"
        elements.append(
            f'<xsd:element name="{name}Request"><xsd:complexType><xsd:sequence>'
            f'<xsd:element name="uscc" type="xsd:string"/><xsd:element name="year" type="xsd:int"/>'
            f'<xsd:element name="filter{i}" type="xsd:string" minOccurs="0"/>'
            "</xsd:sequence></xsd:complexType></xsd:element>"
            f'<xsd:element name="{name}Response"><xsd:complexType><xsd:sequence>'
            f'<xsd:element name="uscc" type="xsd:string"/><xsd:element name="status" type="tns:Status"/>'
            f'<xsd:element name="total" type="xsd:decimal"/><xsd:element name="line" type="tns:Line" '
            'minOccurs="0" maxOccurs="unbounded"/><xsd:choice><xsd:element name="note" type="xsd:string"/>'
            f'<xsd:element name="code{i}" type="xsd:int"/></xsd:choice></xsd:sequence>'
            '<xsd:attribute name="version" type="xsd:int"/></xsd:complexType></xsd:element>'
        )
        messages.append(
            f'<wsdl:message name="{name}In"><wsdl:part name="parameters" element="tns:{name}Request"/></wsdl:message>'
            f'<wsdl:message name="{name}Out"><wsdl:part name="parameters" element="tns:{name}Response"/></wsdl:message>'
        )
        port_ops.append(
            f'<wsdl:operation name="{name}"><wsdl:input message="tns:{name}In"/>'
            f'<wsdl:output message="tns:{name}Out"/></wsdl:operation>'
        )
        binding_ops.append(
            f'<wsdl:operation name="{name}"><soap:operation soapAction="{ns}:{name}"/>'
            '<wsdl:input><soap:body use="literal"/></wsdl:input><wsdl:output><soap:body use="literal"/></wsdl:output>'
            "</wsdl:operation>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/" '
        'xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        f'xmlns:tns="{ns}" targetNamespace="{ns}"><wsdl:types>'
        f'<xsd:schema targetNamespace="{ns}" elementFormDefault="qualified">{"".join(elements)}</xsd:schema>'
        f'</wsdl:types>{"".join(messages)}<wsdl:portType name="FiftyPort">{"".join(port_ops)}</wsdl:portType>'
        '<wsdl:binding name="FiftySoap" type="tns:FiftyPort">'
        '<soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>'
        f'{"".join(binding_ops)}</wsdl:binding><wsdl:service name="FiftyService"><wsdl:port name="FiftyPort" '
        'binding="tns:FiftySoap"><soap:address location="http://127.0.0.1:9/fifty"/></wsdl:port></wsdl:service>'
        "</wsdl:definitions>"
    )


_COLD = """
import json, sys, time
started = time.perf_counter()
from gateway.upstreams.registry import prepare
from adapters.registered import build_registered
imported = time.perf_counter()
prepared = prepare("fifty", "wsdl", source=sys.argv[1], allow_files=True)
cold = time.perf_counter()
build_registered(prepared.spec)
rebuilt = time.perf_counter()
schemas = sum(len(json.dumps(op.input_model.model_json_schema())) for op in prepared.adapter.operations.values())
print(json.dumps({"imports_s": imported - started, "cold_s": cold - imported, "rebuild_s": rebuilt - cold,
                  "operations": len(prepared.adapter.operations), "schema_bytes": schemas}))
"""


def _registration(runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="msjx-bench-") as temp:
        wsdl = Path(temp) / "fifty.wsdl"
        wsdl.write_text(generate_wsdl())
        cold, rebuild, imports = [], [], []
        operations = 0
        for _ in range(runs):  # a fresh interpreter each time: nothing of the contract is cached
            out = subprocess.run(
                [sys.executable, "-c", _COLD, str(wsdl)], capture_output=True, text=True, check=True, cwd=ROOT
            )
            figures = json.loads(out.stdout)
            cold.append(figures["cold_s"])
            rebuild.append(figures["rebuild_s"])
            imports.append(figures["imports_s"])
            operations = figures["operations"]
        var = str(Path(temp) / "var")
        started = time.perf_counter()
        subprocess.run(
            [CLI, "upstreams", "add", "fifty", "--owner", "区数据管理局", "--wsdl", str(wsdl), "--data-dir", var],
            capture_output=True,
            text=True,
            check=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("MSJX_")},
        )
        cli_wall = time.perf_counter() - started
    return {
        "wsdl_bytes": len(generate_wsdl()),
        "operations": operations,
        "runs": runs,
        "cold_prepare_ms_median": round(statistics.median(cold) * 1000, 1),
        "cold_prepare_ms_all": [round(value * 1000, 1) for value in cold],
        "rebuild_from_stored_bundle_ms_median": round(statistics.median(rebuild) * 1000, 1),
        "imports_ms_median": round(statistics.median(imports) * 1000, 1),
        "cli_upstreams_add_wall_ms": round(cli_wall * 1000, 1),
        "note": "cold_prepare: read + parse (zeep) + derive 100 pydantic models, first time in a fresh process; "
        "rebuild: what another node does from the stored bundle; CLI wall includes interpreter start and migration",
    }


# --- the run ---------------------------------------------------------------------------------------------------------


def run(quick: bool = False) -> dict[str, Any]:
    """Measure, write bench/results/soap.json, and return the figures."""
    from simulators.enterprises import DEMO_USCC

    sequential = 300 if quick else 1500
    concurrent_calls = 600 if quick else 3000
    concurrency = 16
    started = time.perf_counter()
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="msjx-bench-") as temp:
        process, simulators, caller = _start_demo(Path(temp), port)
        try:
            simulator = simulators["golden-tax"]
            zeep_samples = _zeep_direct(simulator, sequential, DEMO_USCC)
            adapter_seq, _ = asyncio.run(_adapter(simulator, sequential, 1, DEMO_USCC))
            gateway_seq, _ = asyncio.run(_gateway(f"http://127.0.0.1:{port}", caller, sequential, 1, DEMO_USCC))
            credit_seq, _ = asyncio.run(
                _gateway(
                    f"http://127.0.0.1:{port}", caller, sequential, 1, DEMO_USCC, "/v1/services/credit/dishonest-debtor"
                )
            )
            adapter_conc, adapter_wall = asyncio.run(_adapter(simulator, concurrent_calls, concurrency, DEMO_USCC))
            gateway_conc, gateway_wall = asyncio.run(
                _gateway(f"http://127.0.0.1:{port}", caller, concurrent_calls, concurrency, DEMO_USCC)
            )
            loaded = _wrk(f"http://127.0.0.1:{port}", process.pid, caller, DEMO_USCC, 3 if quick else 10, Path(temp))
        finally:
            _stop(process)
    zeep = _summary(zeep_samples)
    through = _summary(gateway_seq)
    engine = _summary(adapter_seq)
    rest = _summary(credit_seq)
    results: dict[str, Any] = {
        "benchmark": "soap",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": ".venv/bin/python -m bench.soap" + (" --quick" if quick else ""),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "call": "golden-tax tax-credit-rating (CxNsxydj) for one enterprise, 2025",
        "sequential": {
            "zeep_direct": {**zeep, "how": "zeep.Client (requests transport), one call at a time"},
            "adapter": {**engine, "how": "GoldenTaxAdapter.invoke: zeep builds/reads, aiohttp carries, no gateway"},
            "gateway": {
                **through,
                "how": "signed HTTP to `serve --demo` (SQLite, audit commit per call), which calls the adapter",
            },
            "gateway_rest_floor": {
                **rest,
                "how": "the same gateway path to the credit simulator (REST/JSON): what every call costs, SOAP or not",
            },
            "gateway_over_zeep_p50_ms": round(through["p50_ms"] - zeep["p50_ms"], 3),
            "soap_over_rest_through_gateway_p50_ms": round(through["p50_ms"] - rest["p50_ms"], 3),
            "adapter_over_zeep_p50_ms": round(engine["p50_ms"] - zeep["p50_ms"], 3),
        },
        f"concurrent_{concurrency}": {
            "adapter": {
                **_summary(adapter_conc, False),
                "throughput_per_s": round(len(adapter_conc) / adapter_wall, 1),
            },
            "gateway": {
                **_summary(gateway_conc, False),
                "throughput_per_s": round(len(gateway_conc) / gateway_wall, 1),
            },
        },
        "wrk": loaded,
        "registration_50_operations": _registration(2 if quick else 5),
        "note": "client, gateway and simulators share the machine's CPUs; compare rows with each other",
    }
    results["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soap", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (about 20 s)")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.quick), ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
