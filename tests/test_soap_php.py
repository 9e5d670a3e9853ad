"""PHP's SoapClient (Debian php-cli + php-soap) proves the façade over mutual TLS: it reads the generated WSDLs,
calls a REST-backed and a SOAP-backed service (SOAP 1.1 and 1.2) with a client certificate, gets the minimized
answers, and a SoapFault whose detail carries `purpose_not_granted` for a purpose it holds no grant for."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from simulators.enterprises import DEMO_USCC
from tests.helpers.gateways import RunningGateway
from tests.helpers.services import REQUIRE_SERVICES
from tests.helpers.soap import LEGACY, LEGACY_PURPOSE, Pki, register_legacy_caller, soap_gateway, tls_listener

pytestmark = pytest.mark.slow
CLIENT = Path(__file__).parent / "clients" / "soap_client.php"


def php() -> str:
    binary = shutil.which("php")
    has_soap = (
        binary is not None
        and "soap" in subprocess.run([binary, "-m"], capture_output=True, text=True, check=False).stdout.lower().split()
    )
    if binary is None or not has_soap:
        message = (
            "php-cli with php-soap is not installed (scripts/run-tests.sh installs them: bench/install-deps.sh php)"
        )
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.fixture(scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    async with soap_gateway(tmp_path_factory.mktemp("php")) as running:
        yield running


def run_php(binary: str, url: str, pki: Pki) -> dict[str, Any]:
    cert, key = pki.issue(LEGACY)
    command = [
        binary,
        str(CLIENT),
        url,
        str(cert),
        str(key),
        str(pki.ca_path),
        LEGACY_PURPOSE,
        "XM-2025-001",
        DEMO_USCC,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def test_php_soap_client_over_mutual_tls(gw: RunningGateway, tmp_path: Path) -> None:
    binary = php()
    pki = Pki.create(tmp_path)
    await register_legacy_caller(gw, pki)
    async with tls_listener(gw, pki) as url:
        out = await asyncio.to_thread(run_php, binary, url, pki)
    assert any("dishonest-debtor" in function for function in out["functions"])
    assert out["credit"]["data"] == {"listed": out["credit"]["data"]["listed"]}  # granted: `listed` only
    assert out["credit"]["meta"]["service"] == "credit"
    assert set(out["tax"]["data"]) == {"uscc", "status"} and out["tax"]["data"]["uscc"] == DEMO_USCC
    assert out["refused"]["code"] == "purpose_not_granted" and out["refused"]["fault"].endswith("Client")
    assert out["refused12"]["code"] == "purpose_not_granted" and out["refused12"]["fault"].endswith("Sender")
