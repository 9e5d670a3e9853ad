"""For Python SOAP clients (zeep): a `requests` auth that signs each request as /v1 wants (RFC 9421).

session = requests.Session(); session.auth = RequestsSignatureAuth(key_id, private_key)
client = zeep.Client("https://gw.example/soap/credit?wsdl", transport=zeep.Transport(session=session))
"""

from __future__ import annotations

import requests

from security.keys import PrivateKey
from security.signatures import sign_request


class RequestsSignatureAuth(requests.auth.AuthBase):
    """Signs every request of a requests session (the WSDL fetch too) with a fresh nonce and its Content-Digest."""

    def __init__(self, key_id: str, private_key: PrivateKey) -> None:
        self.key_id = key_id
        self._private_key = private_key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        content = body.encode() if isinstance(body, str) else body
        sign_request(
            request.method or "GET",
            request.url or "",
            request.headers,
            content,
            key_id=self.key_id,
            private_key=self._private_key,
        )
        return request
