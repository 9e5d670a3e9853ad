"""docs/deploy.md's nginx configuration, run by Debian's nginx in front of a real `msjx-gateway serve`.

The block is read from the document itself, so the page cannot drift from what is tested. With the gateway
trusting nginx (MSJX_TRUSTED_PROXIES=127.0.0.1), signed calls over TLS through nginx succeed; trusting nobody,
the same call fails `signature_invalid` and the detail names what the gateway compared.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.client import SignatureAuth
from security.keys import key_id_for, public_key_pem
from tests.helpers.nginx import start_nginx, wait_for_port
from tests.helpers.processes import CLI, stop
from tests.helpers.services import free_port

pytestmark = pytest.mark.slow


class Deployment:
    def __init__(self, root: Path, trusted: str, nginx: str, broken_node: int | None = None) -> None:
        self.root = root
        self.broken_node = broken_node
        self.key = Ed25519PrivateKey.generate()
        self.key_id = key_id_for("admin", self.key.public_key())
        self.gateway_port = free_port()
        self.nginx_port = 0
        self.ca = ""
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("MSJX_")}
        self.env.update(
            MSJX_DATA_DIR=str(root / "gateway"), MSJX_TRUSTED_PROXIES=trusted, MSJX_SIGNATURE_VERIFIER="inline"
        )
        self.nginx = nginx
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        public = self.root / "admin.pub.pem"
        public.write_text(public_key_pem(self.key.public_key()))
        add = ["callers", "add", "admin", "--name", "admin", "--department", "市大数据中心", "--role", "admin"]
        added = subprocess.run(
            [CLI, *add, "--public-key", str(public), "--key-id", self.key_id],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert added.returncode == 0, added.stderr
        gateway_log = (self.root / "gateway.log").open("wb")
        gateway = subprocess.Popen(
            [CLI, "serve", "--port", str(self.gateway_port)], env=self.env, stdout=gateway_log, stderr=gateway_log
        )
        self.processes.append(gateway)
        wait_for_port(self.gateway_port, gateway, "the gateway")

        servers = f"server 127.0.0.1:{self.gateway_port};"
        if self.broken_node is not None:
            # Never taken out of rotation, so that calls keep meeting it first in turn.
            servers = f"server 127.0.0.1:{self.broken_node} max_fails=0;\n    {servers[:-1]} max_fails=0;"
        proxy, self.nginx_port, self.ca = start_nginx(self.root, self.nginx, servers)
        self.processes.append(proxy)

    def client(self) -> httpx.Client:
        context = ssl.create_default_context(cafile=self.ca)
        return httpx.Client(
            base_url=f"https://127.0.0.1:{self.nginx_port}",
            verify=context,
            auth=SignatureAuth(self.key_id, self.key),
            timeout=30,
        )

    def close(self) -> None:
        for process in reversed(self.processes):
            stop(process)


class BrokenNode:
    """A node that takes each request in and dies before answering: nginx sees the connection close."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5)
                received = b""
                try:
                    while b"\r\n\r\n" not in received:
                        chunk = connection.recv(65536)
                        if not chunk:
                            break
                        received += chunk
                except OSError:
                    pass
                if received:
                    self.requests += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()


@pytest.fixture
def deployment(request: pytest.FixtureRequest, tmp_path: Path, nginx_binary: str) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path, request.param, nginx_binary)
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.close()


@pytest.mark.parametrize("deployment", ["127.0.0.1"], indirect=True)
def test_signed_calls_through_the_documented_nginx_succeed(deployment: Deployment) -> None:
    with deployment.client() as client:
        listed = client.get("/v1/callers")
        assert listed.status_code == 200, listed.text
        assert [caller["caller_id"] for caller in listed.json()] == ["admin"]
        # A POST with an Idempotency-Key takes the documented retrying location, body and signed key intact.
        body = {"caller_id": "district", "name": "区级系统", "department": "区数据局", "roles": ["department"]}
        added = client.post("/v1/callers", json=body, headers={"Idempotency-Key": "add-district-1"})
        assert added.status_code == 201, added.text
        plain = client.post("/v1/callers", json={**body, "caller_id": "district-2"})
        assert plain.status_code == 201, plain.text
        assert {caller["caller_id"] for caller in client.get("/v1/callers").json()} == {
            "admin",
            "district",
            "district-2",
        }


@pytest.mark.parametrize("deployment", [""], indirect=True)
def test_without_trusted_proxies_the_call_fails_naming_what_was_compared(deployment: Deployment) -> None:
    with deployment.client() as client:
        refused = client.get("/v1/callers")
    assert refused.status_code == 401
    problem = refused.json()
    assert problem["code"] == "signature_invalid"
    detail = problem["detail"]
    assert '"@method" "@target-uri"' in detail
    # nginx's default Host is the upstream block's name, over plain http: not what the client signed.
    assert "@target-uri http://msjx_gateway/v1/callers (@authority msjx_gateway, @scheme http)" in detail
    assert "x-forwarded-host, x-forwarded-proto header(s) were ignored: its peer 127.0.0.1" in detail
    assert deployment.key_id not in detail


def test_nginx_resends_a_post_to_another_node_only_with_an_idempotency_key(tmp_path: Path, nginx_binary: str) -> None:
    """Upstreams: a node that takes requests in and dies without answering, and a live one. A POST with an
    Idempotency-Key that met the broken node is sent on to the live one; a POST without one is not (502)."""
    broken = BrokenNode()
    deployment = Deployment(tmp_path, "127.0.0.1", nginx_binary, broken_node=broken.port)
    try:
        deployment.start()
        with deployment.client() as client:
            keyed, plain = [], []
            for index in range(4):
                body = {"caller_id": f"keyed-{index}", "name": "n", "department": "d", "roles": ["department"]}
                response = client.post("/v1/callers", json=body, headers={"Idempotency-Key": f"add-keyed-{index}"})
                keyed.append(response.status_code)
            met_broken_with_key = broken.requests
            for index in range(4):
                body = {"caller_id": f"plain-{index}", "name": "n", "department": "d", "roles": ["department"]}
                plain.append(client.post("/v1/callers", json=body).status_code)
            listed = {caller["caller_id"] for caller in client.get("/v1/callers").json()}
    finally:
        deployment.close()
        broken.close()
    assert met_broken_with_key >= 1, "round robin sent no keyed POST to the broken node: nothing was tested"
    assert keyed == [201] * 4, "every keyed POST was resent to the live node"
    assert broken.requests > met_broken_with_key, "no plain POST met the broken node: nothing was tested"
    assert 502 in plain and 201 in plain, plain
    # What nginx answered is what happened: each keyed caller exists once, only the plain POSTs answered 201 do.
    assert {f"keyed-{index}" for index in range(4)} <= listed
    assert {f"plain-{index}" for index, status in enumerate(plain) if status == 201} == {
        name for name in listed if name.startswith("plain-")
    }
