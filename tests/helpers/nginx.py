"""Debian's nginx in front of test gateways, configured from docs/deploy.md's own block."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers.certs import certificate_builder
from tests.helpers.services import REQUIRE_SERVICES, free_port

ROOT = Path(__file__).resolve().parents[2]


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_block(document: str = "deploy.md") -> str:
    text = (ROOT / "docs" / document).read_text(encoding="utf-8")
    blocks = re.findall(r"```nginx\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1, f"docs/{document} has exactly one nginx block: the one its test runs"
    return blocks[0]


def substitute(block: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert block.count(old) == 1, f"docs/deploy.md's nginx block no longer has {old!r} once"
        block = block.replace(old, new)
    return block


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = (
        certificate_builder(name, name, key.public_key())
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "gw.crt", directory / "gw.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{what} never listened on {port}")


def start_nginx(root: Path, nginx: str, servers: str) -> tuple[subprocess.Popen[bytes], int, str]:
    """docs/deploy.md's nginx block, its upstream being `servers`, run under `root` with a fresh self-signed
    certificate. Returns the nginx process, the port it listens on (TLS) and the path of the CA to trust."""
    port = free_port()
    cert, key = self_signed(root)
    site = substitute(
        nginx_block(),
        {
            "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
            "server 127.0.0.1:8000;": servers,
            "/etc/ssl/msjx/gw.example.crt": str(cert),
            "/etc/ssl/msjx/gw.example.key": str(key),
        },
    )
    proxy = run_site(root, nginx, site, port)
    return proxy, port, str(cert)


def run_site(root: Path, nginx: str, site: str, port: int) -> subprocess.Popen[bytes]:
    """Debian's nginx serving `site` (a server block), run under `root`, once it listens on `port`."""
    (root / "msjx-gateway.conf").write_text(site)
    temp = root / "nginx-temp"
    temp.mkdir()
    paths = " ".join(
        f"{kind}_temp_path {temp / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # nginx runs as root here: its workers would otherwise be `nobody`, unable to read this private temp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    (root / "nginx.conf").write_text(
        f"{user}\ndaemon off;\nworker_processes 1;\npid {root / 'nginx.pid'};\n"
        f"error_log {root / 'nginx-error.log'} warn;\nevents {{ worker_connections 64; }}\n"
        f"http {{\n access_log off;\n {paths}\n include {root / 'msjx-gateway.conf'};\n}}\n"
    )
    command = [nginx, "-p", str(root), "-c", str(root / "nginx.conf"), "-e", "stderr"]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    proxy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=(root / "nginx.out").open("wb"))
    wait_for_port(port, proxy, "nginx")
    return proxy


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    if not os.access(NGINX, os.X_OK):
        message = "nginx is not installed (scripts/run-tests.sh installs it with apt-get: `apt-get install -y nginx`)"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    return NGINX
