"""Adapter of the credit platform (信用平台): its pinyin-keyed REST/JSON translated into the canonical credit models."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel

from schemas.credit import AbnormalOperationRecord, CreditQuery, DishonestDebtorRecord, SeriousViolationRecord

from .base import Operation, UpstreamResult
from .errors import UpstreamError, UpstreamMalformed, UpstreamRejected
from .http import RestAdapter

__all__ = ["CreditAdapter"]

_OK = "0000"
_FLAGS = {"1": True, "0": False}


def _flag(data: dict[str, Any], key: str) -> bool:
    value = data[key]
    if value not in _FLAGS:
        raise ValueError(f"{key} is {value!r}, expected '1' or '0'")
    return _FLAGS[value]


def _items(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    # Some platforms send null instead of [] for "nothing listed".
    items = data.get(key) or []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ValueError(f"{key} is not a list of objects")
    return items


def _dishonest(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "uscc": data["tyshxydm"],
        "listed": _flag(data, "sfsx"),
        "cases": [
            {
                "court": case["zxfy"],
                "case_number": case["ah"],
                "filed_on": case["lasj"],
                # Left as the wire's string: the output model reads it into a Decimal without a float in between.
                "amount": case["zxbd"],
                "obligation": case["yw"],
                "performance": case["lxqk"],
            }
            for case in _items(data, "ajxx")
        ],
    }


def _listing(wire_key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def translate(data: dict[str, Any]) -> dict[str, Any]:
        return {
            "uscc": data["tyshxydm"],
            "listed": _flag(data, "sflr"),
            "entries": [
                {"reason": item["lryy"], "listed_on": item["lrrq"], "authority": item["jdjg"]}
                for item in _items(data, wire_key)
            ],
        }

    return translate


# operation name -> (path on the platform, translation of its "data" object)
_ROUTES: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "dishonest-debtor": ("/api/credit/v1/dishonest-debtors", _dishonest),
    "abnormal-operation": ("/api/credit/v1/abnormal-operations", _listing("jyycxx")),
    "serious-violation": ("/api/credit/v1/serious-violations", _listing("yzwfxx")),
}


class CreditAdapter(RestAdapter):
    """失信被执行人, 经营异常名录 and 严重违法失信名单 lookups by USCC."""

    service = "credit"
    title = "信用平台 credit platform"
    provider_department = "市发改委"
    default_max_connections = 100
    operations: ClassVar[dict[str, Operation]] = {
        operation.name: operation
        for operation in (
            Operation(
                "dishonest-debtor",
                "Is the enterprise a dishonest judgment debtor (失信被执行人)? With the enforcement cases.",
                input_model=CreditQuery,
                output_model=DishonestDebtorRecord,
                safe=True,
            ),
            Operation(
                "abnormal-operation",
                "Is the enterprise on the list of abnormal operations (经营异常名录)?",
                input_model=CreditQuery,
                output_model=AbnormalOperationRecord,
                safe=True,
            ),
            Operation(
                "serious-violation",
                "Is the enterprise on the list of serious violations of law and trust (严重违法失信名单)?",
                input_model=CreditQuery,
                output_model=SeriousViolationRecord,
                safe=True,
            ),
        )
    }

    # The platform's batch-query endpoints (POST <path>/batch-query, {"tyshxydm": [...]}) take up to 1,000 codes.
    bulk_operations: ClassVar[dict[str, int]] = {name: 1000 for name in _ROUTES}

    async def call_bulk(
        self, operation: Operation, params: Sequence[BaseModel]
    ) -> list[UpstreamResult | UpstreamError]:
        path, translate = _ROUTES[operation.name]
        codes: list[str] = [item.uscc for item in params]  # type: ignore[attr-defined]
        response = await self.http.post_json(path + "/batch-query", {"tyshxydm": codes})
        body = response.body
        code = body.get("code")
        if code != _OK:
            upstream_status = str(code) if code is not None else str(response.status)
            raise UpstreamRejected(self.service, upstream_status, str(body.get("message") or "no message"))
        items = body.get("data")
        if not isinstance(items, list) or len(items) != len(codes):
            raise UpstreamMalformed(self.service, "'data' is not a list with one answer per code", _OK)
        answers: list[UpstreamResult | UpstreamError] = []
        for uscc, item in zip(codes, items, strict=True):
            try:
                result = translate(item)
            except (KeyError, TypeError, ValueError) as exc:
                missing = f"'{exc.args[0]}' is missing" if isinstance(exc, KeyError) else str(exc)
                answers.append(UpstreamMalformed(self.service, missing, _OK))
                continue
            if result["uscc"] != uscc:
                answers.append(UpstreamMalformed(self.service, "the answer is about a different enterprise", _OK))
                continue
            answers.append(UpstreamResult(result, upstream_status=str(response.status)))
        return answers

    async def call(self, operation: Operation, params: BaseModel) -> UpstreamResult:
        path, translate = _ROUTES[operation.name]
        uscc: str = params.uscc  # type: ignore[attr-defined]  # every operation takes a CreditQuery
        response = await self.http.get_json(path, {"tyshxydm": uscc})
        body = response.body
        code = body.get("code")
        if code != _OK:
            # The platform's own code (4001 bad USCC, ...) says more than the HTTP status that came with it.
            upstream_status = str(code) if code is not None else str(response.status)
            raise UpstreamRejected(self.service, upstream_status, str(body.get("message") or "no message"))
        data = body.get("data")
        if not isinstance(data, dict):
            raise UpstreamMalformed(self.service, "'data' is not an object", _OK)
        try:
            result = translate(data)
        except (KeyError, TypeError, ValueError) as exc:
            missing = f"'{exc.args[0]}' is missing" if isinstance(exc, KeyError) else str(exc)
            raise UpstreamMalformed(self.service, missing, _OK) from exc
        if result["uscc"] != uscc:
            # An answer about another enterprise must never be passed on as this one's.
            raise UpstreamMalformed(self.service, "the answer is about a different enterprise", _OK)
        return UpstreamResult(result, upstream_status=str(response.status))
