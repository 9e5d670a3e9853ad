"""Masking: sensitive schema fields wherever shown outside a decrypted payload, and identifiers in every log line."""

from __future__ import annotations

import base64
import logging
import os
import sys
from typing import Annotated

import pytest
from pydantic import BaseModel, Field

from schemas.sensitive import SENSITIVE_KEY, BankAccount, IdNumber, Phone, Sensitive, sensitive_fields
from security.masking import (
    install_log_masking,
    mask_bank_account,
    mask_document,
    mask_id_number,
    mask_name,
    mask_phone,
    mask_record,
    mask_text,
)
from simulators.enterprises import DEMO_LISTED_USCC
from tests.helpers.gateways import PURPOSE, RunningGateway

ID_NUMBER = "110101199003071234"
PHONE = "13812345678"
CARD = "6222021234567890123"


def test_maskers_keep_only_what_identifies_nobody() -> None:
    assert mask_id_number(ID_NUMBER) == "110***********1234"
    assert mask_phone(PHONE) == "138****5678"
    assert mask_bank_account(CARD) == "6222***********0123"
    assert mask_name("欧阳娜娜") == "欧***" and mask_name("张三") == "张*"


def test_text_masking_catches_identifiers_keys_and_signatures_but_not_digests() -> None:
    digest = "ab" * 32
    request_id = "0123456789abcdef" * 2
    pem = (
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIE6yb1w7Mck0Xh3cEDIHYH5SKHgXaDEQg6Ym3OHdPJ8W\n"
        "-----END PRIVATE KEY-----"
    )
    line = (
        f"rep {ID_NUMBER} tel {PHONE} card {CARD} uscc {DEMO_LISTED_USCC} key {pem} "
        "sig msjx=:QmFzZTY0IHNpZ25hdHVyZSB2YWx1ZSBoZXJlIQ==: "
        "master kq0Z8a3qvG3Y5Yk2m1b4v0c6d8e9f+g1h2i3j4k5l6M= "
        f"hash {digest} request {request_id}"
    )
    masked = mask_text(line)
    for secret in (ID_NUMBER, PHONE, CARD, DEMO_LISTED_USCC, "MC4CAQAw", "QmFzZTY0", "kq0Z8a3q"):
        assert secret not in masked, secret
    assert "110***********1234" in masked and "138****5678" in masked
    assert digest in masked and request_id in masked, "hashes and ids stay readable in logs"


class Representative(BaseModel):
    name: Annotated[str, Sensitive("name")]
    id_number: IdNumber
    phone: Phone
    title: str


class Enterprise(BaseModel):
    uscc: str
    legal_representative: Representative
    accounts: list[Annotated[BankAccount, Field(description="settlement accounts")]]
    contacts: list[Representative] = []


def test_marked_fields_are_masked_in_nested_documents() -> None:
    assert sensitive_fields(Representative) == {"name": "name", "id_number": "id_number", "phone": "phone"}
    schema = Enterprise.model_json_schema()
    assert schema["$defs"]["Representative"]["properties"]["id_number"][SENSITIVE_KEY] == "id_number"
    assert schema["properties"]["accounts"]["items"][SENSITIVE_KEY] == "bank_account"
    person = {"name": "张三", "id_number": ID_NUMBER, "phone": PHONE, "title": "执行董事"}
    document = {"uscc": DEMO_LISTED_USCC, "legal_representative": person, "accounts": [CARD], "contacts": [person]}
    masked = mask_document(Enterprise, document)
    assert masked["legal_representative"] == {
        "name": "张*",
        "id_number": "110***********1234",
        "phone": "138****5678",
        "title": "执行董事",
    }
    assert masked["accounts"] == ["6222***********0123"] and masked["contacts"][0]["phone"] == "138****5678"
    assert masked["uscc"] == DEMO_LISTED_USCC, "fields not marked are shown as they are"
    assert document["legal_representative"]["id_number"] == ID_NUMBER, "the original is left alone"
    assert mask_document(schema, document) == masked, "a bare JSON schema (from OpenAPI) works the same"
    with pytest.raises(ValueError, match="unknown sensitive kind"):
        Sensitive("passport")  # type: ignore[arg-type]


def test_every_log_record_is_masked_even_in_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    install_log_masking()
    logger = logging.getLogger("msjx.test")
    with caplog.at_level(logging.INFO):
        logger.info("calling for %s with %s", DEMO_LISTED_USCC, {"phone": PHONE})
        try:
            raise ValueError(f"bad id {ID_NUMBER}")
        except ValueError:
            logger.exception("failed for %s", PHONE)
    text = caplog.text
    assert DEMO_LISTED_USCC not in text and PHONE not in text and ID_NUMBER not in text
    assert "138****5678" in text and "ValueError" in text


def test_file_paths_in_tracebacks_stay_readable_and_keys_beside_them_do_not() -> None:
    key = "q83vEjXb4sMPo4Jh3pgvYHQb/Kq8QbYpDUSa7pX2gqQ="
    unpadded = "q83vEjXb4sMPo4Jh3pgvYHQbKq8Q/bYpDUSa7pX2gqQx"
    paths = [
        "/usr/local/lib/python3/dist/packages/starlette/middleware/exceptions.py",
        "/home/runner/work/msjx/gateway/routes/services.py",
        "/opt/App/Site/lib/Python3/Starlette/Middleware/errors.py",
        "/srv/msjx/releases/20261205/gateway/exchange/handlers/registry.py",
    ]
    for path in paths:
        line = f'  File "{path}", line 12, in run_exchange; key={key} other {unpadded}'
        masked = mask_text(line)
        assert path in masked, masked
        assert key not in masked and unpadded not in masked and masked.count("[redacted base64]") == 2
    # A real traceback, through the log record factory.
    install_log_masking()
    record = logging.getLogger("msjx.test").makeRecord("msjx.test", logging.ERROR, __file__, 1, "boom", (), None)
    try:
        raise RuntimeError(f"with key {key}")
    except RuntimeError:
        record.exc_info = sys.exc_info()
        record.exc_text = None
    record._msjx_masked = False  # type: ignore[attr-defined]
    mask_record(record)
    assert __file__ in (record.exc_text or "") and key not in (record.exc_text or "")


def test_random_base64_keys_with_slashes_are_still_masked() -> None:
    keys = [base64.b64encode(os.urandom(33)).decode() for _ in range(20_000)]
    with_slash = [key for key in keys if "/" in key]
    assert len(with_slash) > 5_000
    assert not [key for key in with_slash if key in mask_text(f"secret {key} end")]


def test_uvicorn_access_lines_still_format_once_masked() -> None:
    from uvicorn.logging import AccessFormatter

    install_log_masking()
    record = logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", f"/v1/audit/records?subject={DEMO_LISTED_USCC}", "1.1", 200),
        None,
    )
    line = AccessFormatter(use_colors=False).format(record)
    assert DEMO_LISTED_USCC not in line and '"GET /v1/audit/records?subject=' in line and "200" in line


async def test_the_gateway_logs_no_payload_or_identifier(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        async with gateway.client() as client:
            for uscc in (DEMO_LISTED_USCC, "91350100M000100Y4Z"):
                await client.post(
                    "/v1/services/credit/dishonest-debtor", json={"purpose": PURPOSE, "params": {"uscc": uscc}}
                )
        async with gateway.client(gateway.officer) as officer:
            await officer.get("/v1/audit/records", params={"subject": DEMO_LISTED_USCC})
    assert caplog.records, "the run logged something to check"
    for record in caplog.records:
        message = record.getMessage()
        assert DEMO_LISTED_USCC not in message and "91350100M000100Y4Z" not in message, message
        assert '"params"' not in message and '"data"' not in message, message
