"""The gateway's own TLS listener: uvicorn's ssl options from the settings, and the ASGI `tls` extension that hands
the verified client certificate (mutual TLS) to the application."""

from __future__ import annotations

import ssl
from typing import Any

from gateway.settings import Settings


def tls_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's ssl_* options; {} for plain HTTP. ValueError names a missing companion setting.

    With MSJX_TLS_CLIENT_CA a client certificate is optional (signed callers need none), but one that is presented
    must verify against that bundle, or the handshake fails: the application only ever sees verified ones."""
    if settings.tls_cert is None:
        if settings.tls_key is not None or settings.tls_client_ca is not None:
            raise ValueError("MSJX_TLS_KEY and MSJX_TLS_CLIENT_CA need MSJX_TLS_CERT (the listener's certificate)")
        return {}
    if settings.tls_key is None:
        raise ValueError("MSJX_TLS_CERT needs MSJX_TLS_KEY, its private key")
    for name, path in (("MSJX_TLS_CERT", settings.tls_cert), ("MSJX_TLS_KEY", settings.tls_key)):
        if not path.is_file():
            raise ValueError(f"{name}: no file {path}")
    options: dict[str, Any] = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    if settings.tls_client_ca is not None:
        if not settings.tls_client_ca.is_file():
            raise ValueError(f"MSJX_TLS_CLIENT_CA: no file {settings.tls_client_ca}")
        options.update(ssl_ca_certs=str(settings.tls_client_ca), ssl_cert_reqs=ssl.CERT_OPTIONAL)
    return options


def tls_extension(transport: Any) -> dict[str, Any] | None:
    """The ASGI TLS extension for a connection: its verified client certificate as PEM, or None without TLS."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": None,
        "cipher_suite": None,
    }
