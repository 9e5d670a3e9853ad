"""The platform's three steps for one policy: 数据比对 → 意愿确认 → 政策兑现, then 公示, all through the gateway.

Payments are idempotent by construction: the voucher number and Idempotency-Key of a (policy, enterprise) are the
same on every run, so running a policy again pays nobody twice; the gateway answers repeats from its store and says
so (`Idempotent-Replayed`), which the report counts as "already paid".
"""

from __future__ import annotations

import csv
import hashlib
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway.client import GatewayClient, GatewayError
from simulators.enterprises import ENTERPRISES, Enterprise, by_uscc

from .csvlist import ListError, ListRejected, read_list
from .policies import ConditionPolicy, ListPolicy, build_voucher, idempotency_key

CONDITION_SERVICES = (
    ("golden-tax", "tax-credit-rating"),
    ("market", "enterprise-profile"),
    ("credit", "dishonest-debtor"),
    ("treasury", "submit-voucher"),
)
LIST_SERVICES = (("credit", "dishonest-debtor"), ("treasury", "submit-voucher"))
NOT_OFFERED = "golden-tax/market adapters not in this branch"

REASON_RATING = "纳税信用等级不是A (tax credit rating not A)"
REASON_NOT_OPERATING = "非存续/在业 (not in operation)"
REASON_DISHONEST = "失信被执行人 (dishonest judgment debtor)"
REASON_DECLINED = "企业放弃 (declined)"
REASON_NO_ANSWER = "未在期限内确认 (no answer by the deadline)"
REASON_PENDING = "兑现结果待核实 (payment outcome pending; the gateway reconciles it)"


@dataclass
class Payment:
    uscc: str
    name: str
    amount: Decimal
    voucher_no: str
    treasury_serial: str
    replayed: bool


@dataclass
class PolicyReport:
    code: str
    title: str
    kind: str
    compared: int = 0
    eligible: int = 0
    confirmed: int = 0
    paid: int = 0  # paid by this run
    already_paid: int = 0  # paid by an earlier run: the gateway answered from its idempotency store
    refused: Counter[str] = field(default_factory=Counter)
    payments: list[Payment] = field(default_factory=list)
    list_errors: list[ListError] = field(default_factory=list)
    skipped: str | None = None
    publicity: Path | None = None
    # 数据比对 by one batch job: its id, and how long it took from submission to the last result line.
    batch_id: str | None = None
    comparison_seconds: float | None = None

    @property
    def total(self) -> Decimal:
        """Everything this policy has paid out, this run or earlier."""
        return sum((payment.amount for payment in self.payments), Decimal("0.00"))

    @property
    def paid_now_total(self) -> Decimal:
        return sum((payment.amount for payment in self.payments if not payment.replayed), Decimal("0.00"))


def confirmation(policy_code: str, uscc: str) -> str:
    """意愿确认, simulated: the enterprise's one-click answer. Most confirm, some decline, some never answer;
    the same enterprise answers the same way on every run."""
    bucket = hashlib.sha256(f"{policy_code}/{uscc}".encode()).digest()[0] % 100
    if bucket < 82:
        return "confirmed"
    return "declined" if bucket < 91 else "no_answer"


def registered_name(uscc: str) -> str | None:
    """The platform's enterprise register (企业库), synchronised from market registration in real life."""
    enterprise = by_uscc(uscc)
    return enterprise.name if enterprise else None


def offered(client: GatewayClient) -> set[tuple[str, str]]:
    listing = client.services()
    return {(item["service"], op["operation"]) for item in listing["services"] for op in item["operations"]}


BATCH_OPERATIONS = ("golden-tax/tax-credit-rating", "market/enterprise-profile", "credit/dishonest-debtor")


def _compare_by_batch(
    client: GatewayClient, policy: ConditionPolicy, enterprises: Iterable[Enterprise], report: PolicyReport
) -> dict[str, dict[str, dict[str, Any]]] | None:
    """Every enterprise's three answers from one batch job (批量交换), by USCC and operation; None when the grants do
    not allow batch (an older demo set-up): then the comparison goes call by call."""
    try:
        handle = client.batch(
            policy.purpose, BATCH_OPERATIONS, [e.uscc for e in enterprises], params={"year": policy.year}
        )
    except GatewayError as exc:
        if exc.code in ("share_method_not_granted", "no_grant", "purpose_not_granted"):
            return None
        raise
    report.batch_id = handle.batch_id
    handle.wait(poll=0.2)
    answers: dict[str, dict[str, dict[str, Any]]] = {}
    for line in handle.results():
        answers.setdefault(line["uscc"], {})[line["operation"]] = line.get("data") or {}
    return answers


def run_condition_policy(
    client: GatewayClient,
    policy: ConditionPolicy,
    out_dir: Path,
    enterprises: Iterable[Enterprise] = ENTERPRISES,
    *,
    use_batch: bool = True,
) -> PolicyReport:
    report = PolicyReport(policy.code, policy.title, policy.kind)
    if not set(CONDITION_SERVICES) <= offered(client):
        report.skipped = NOT_OFFERED
        return report
    candidates: list[tuple[str, str, Decimal]] = []
    enterprises = list(enterprises)
    started = time.monotonic()
    compared = _compare_by_batch(client, policy, enterprises, report) if use_batch else None
    for enterprise in enterprises:
        uscc = enterprise.uscc
        report.compared += 1
        if compared is not None:
            answers = compared.get(uscc, {})
            rating = {"data": answers.get("tax-credit-rating", {})}
        else:
            # Conditions in order, stopping at the first that fails: no data is asked for that is not needed.
            rating = client.invoke("golden-tax", "tax-credit-rating", policy.purpose, uscc=uscc, year=policy.year)
        if rating["data"].get("rating") != policy.rating:
            report.refused[REASON_RATING] += 1
            continue
        if compared is not None:
            profile = compared.get(uscc, {}).get("enterprise-profile", {})
        else:
            profile = client.invoke("market", "enterprise-profile", policy.purpose, uscc=uscc)["data"]
        if not profile.get("in_operation"):
            report.refused[REASON_NOT_OPERATING] += 1
            continue
        if compared is not None:
            debtor = compared.get(uscc, {}).get("dishonest-debtor", {})
        else:
            debtor = client.invoke("credit", "dishonest-debtor", policy.purpose, uscc=uscc)["data"]
        if debtor.get("listed"):
            report.refused[REASON_DISHONEST] += 1
            continue
        report.eligible += 1
        candidates.append((uscc, profile.get("name") or enterprise.name, policy.amount))
    report.comparison_seconds = time.monotonic() - started
    _confirm_and_pay(client, policy, candidates, report)
    report.publicity = publish(report, out_dir)
    return report


def run_list_policy(
    client: GatewayClient, policy: ListPolicy, out_dir: Path, list_file: Path | None = None
) -> PolicyReport:
    report = PolicyReport(policy.code, policy.title, policy.kind)
    if not set(LIST_SERVICES) <= offered(client):
        report.skipped = "credit/treasury not offered by this gateway"
        return report
    try:
        entries = read_list(
            list_file or policy.list_file, registered_name=registered_name, default_amount=policy.default_amount
        )
    except ListRejected as rejected:
        report.list_errors = rejected.errors
        return report
    candidates = []
    for entry in entries:
        report.compared += 1
        # 联合惩戒: a dishonest judgment debtor gets no government subsidy, whatever the department's list says.
        debtor = client.invoke("credit", "dishonest-debtor", policy.purpose, uscc=entry.uscc)["data"]
        if debtor.get("listed"):
            report.refused[REASON_DISHONEST] += 1
            continue
        report.eligible += 1
        candidates.append((entry.uscc, entry.name, entry.amount))
    _confirm_and_pay(client, policy, candidates, report)
    report.publicity = publish(report, out_dir)
    return report


def _confirm_and_pay(
    client: GatewayClient,
    policy: ConditionPolicy | ListPolicy,
    candidates: list[tuple[str, str, Decimal]],
    report: PolicyReport,
) -> None:
    for uscc, name, amount in candidates:
        answer = confirmation(policy.code, uscc)
        if answer == "declined":
            report.refused[REASON_DECLINED] += 1
            continue
        if answer == "no_answer":
            report.refused[REASON_NO_ANSWER] += 1
            continue
        report.confirmed += 1
        voucher = build_voucher(policy, uscc, name, amount)
        result = pay(client, policy.purpose, voucher, idempotency_key(policy.code, uscc))
        if isinstance(result, str):
            report.refused[result] += 1
            continue
        data, replayed = result
        payment = Payment(uscc, name, Decimal(data["pay_amt"]), data["voucher_no"], data["treasury_serial"], replayed)
        report.payments.append(payment)
        if replayed:
            report.already_paid += 1
        else:
            report.paid += 1


def pay(
    client: GatewayClient, purpose: str, voucher: dict[str, Any], key: str, attempts: int = 4
) -> tuple[dict[str, Any], bool] | str:
    """Submit one voucher; repeat with the same key while its outcome is pending. A string is a refusal reason."""
    for attempt in range(attempts):
        try:
            answer, replayed = client.submit_voucher(purpose, voucher, key)
            return answer["data"], replayed
        except GatewayError as error:
            if error.code not in ("payment_pending", "idempotency_in_flight") or attempt == attempts - 1:
                return REASON_PENDING if error.code == "payment_pending" else f"兑现失败 ({error.code})"
            time.sleep(1.0 * (attempt + 1))  # bounded: 1 + 2 + 3 s at most before giving up for this run
    return REASON_PENDING


def publish(report: PolicyReport, out_dir: Path) -> Path:
    """公示: who was paid how much under the policy (names and codes of enterprises are public; accounts are not)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"publicity-{report.code}.csv"
    with path.open("w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.writer(handle)
        writer.writerow(["企业名称", "统一社会信用代码", "兑现金额(元)", "凭证号", "国库流水号"])
        for payment in sorted(report.payments, key=lambda p: p.uscc):
            writer.writerow(
                [payment.name, payment.uscc, str(payment.amount), payment.voucher_no, payment.treasury_serial]
            )
    return path
