"""Three gateway nodes on one PostgreSQL and one Redis behind docs/deploy.md's nginx, one of them kill -9'd under load.

Signed data calls and treasury vouchers (each with its Idempotency-Key, retried until answered) go through nginx
while node-2 is SIGKILLed, then node-2 comes back. Then: every acknowledged call has its audit record, no voucher was
paid twice, a daily quota is exact across the nodes, a revocation made through one node holds on every node within
one second, and `audit verify` passes on every chain with only the keys the nodes registered in the database.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import ssl
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.access import callers
from gateway.access import grants as grant_rows
from gateway.audit.verify import verify_all
from gateway.client import SignatureAuth
from gateway.demo.setup import key_id_for
from gateway.runtime import build_adapters
from gateway.settings import Settings, load_settings
from gateway.storage import db
from schemas.api import CallerIn, GrantIn, KeyIn
from security.keys import public_key_pem
from tests.helpers.audit import USCC
from tests.helpers.calls import INVOKE
from tests.helpers.deployment import SUBMIT, Deployment, recorded, start_gateway
from tests.helpers.gateways import PURPOSE
from tests.helpers.nginx import start_nginx
from tests.helpers.own_services import own_redis
from tests.helpers.processes import CLI
from tests.helpers.processes import stop as stop_process
from tests.helpers.services import create_test_database, drop_database, free_port
from tests.helpers.treasury import treasury_listing, voucher

pytestmark = pytest.mark.slow
NODES = 3
ACKS_BEFORE_KILL = 120  # data calls acknowledged through nginx before node-2 is killed
ACKS_AFTER_KILL = 60  # and after it, on the two nodes left
CALLERS = 6  # concurrent clients making data calls
PAYERS = 2  # concurrent clients paying vouchers, one voucher after another
DAILY_QUOTA = 7


class Caller:
    def __init__(self, caller_id: str, roles: list[str]) -> None:
        self.caller_id = caller_id
        self.roles = roles
        self.key = Ed25519PrivateKey.generate()
        self.key_id = key_id_for(caller_id, self.key.public_key())
        self.grant_id = ""

    def auth(self) -> SignatureAuth:
        return SignatureAuth(self.key_id, self.key)


async def seed(settings: Settings, people: dict[str, Caller]) -> None:
    """The callers; `platform` may call credit and pay vouchers, `quota` has a small daily quota, `revoked` a grant
    to lose; `admin` revokes it."""
    adapters = build_adapters(settings)
    engine = db.create_engine(settings)
    try:
        async with db.sessionmaker(engine)() as session:
            for caller in people.values():
                key = KeyIn(key_id=caller.key_id, public_key=public_key_pem(caller.key.public_key()))
                body = CallerIn(
                    caller_id=caller.caller_id, name=caller.caller_id, department="市数据管理局", roles=caller.roles
                )
                await callers.add_caller(session, body.model_copy(update={"keys": [key]}))
            valid_to = datetime.now(UTC) + timedelta(days=1)
            grants: list[tuple[str, str, str, int | None]] = [
                ("platform", "credit", "dishonest-debtor", None),
                ("platform", "treasury", "submit-voucher", None),
                ("quota", "credit", "dishonest-debtor", DAILY_QUOTA),
                ("revoked", "credit", "dishonest-debtor", None),
            ]
            for caller_id, service, operation_name, quota in grants:
                operation = adapters[service].operations[operation_name]
                grant = await grant_rows.add_grant(
                    session,
                    GrantIn(
                        caller_id=caller_id,
                        service=service,
                        operation=operation_name,
                        purpose=PURPOSE,
                        fields=list(operation.fields),
                        valid_to=valid_to,
                        daily_quota=quota,
                    ),
                    adapters,
                )
                people[caller_id].grant_id = grant.grant_id
    finally:
        await engine.dispose()


class Cluster:
    def __init__(self, root: Path, deployment: Deployment, nginx: str) -> None:
        self.root = root
        self.deployment = deployment
        self.nginx = nginx
        self.ports = [free_port() for _ in range(NODES)]
        self.nodes: list[subprocess.Popen[bytes] | None] = [None] * NODES
        self.proxy: subprocess.Popen[bytes] | None = None
        self.nginx_port = 0
        self.ca = ""

    def node_env(self, index: int) -> dict[str, str]:
        return {"MSJX_NODE_ID": f"node-{index + 1}", "MSJX_DATA_DIR": str(self.root / f"node-{index + 1}")}

    async def start_node(self, index: int) -> None:
        self.nodes[index] = await start_gateway(self.deployment, self.ports[index], **self.node_env(index))

    async def start(self) -> None:
        await asyncio.gather(*(self.start_node(index) for index in range(NODES)))
        servers = "\n    ".join(f"server 127.0.0.1:{port};" for port in self.ports)
        self.proxy, self.nginx_port, self.ca = start_nginx(self.root, self.nginx, servers)

    def client(self, auth: SignatureAuth, node: int | None = None) -> httpx.AsyncClient:
        """Through nginx (TLS), or straight to one node."""
        if node is None:
            verify = ssl.create_default_context(cafile=self.ca)
            return httpx.AsyncClient(
                base_url=f"https://127.0.0.1:{self.nginx_port}", verify=verify, auth=auth, timeout=30
            )
        return httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.ports[node]}", auth=auth, timeout=30)

    def kill(self, index: int) -> None:
        process = self.nodes[index]
        assert process is not None
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=20) == -signal.SIGKILL

    def close(self) -> None:
        for process in [*self.nodes, self.proxy]:
            if process is not None and process.poll() is None:
                stop_process(process)


@pytest.fixture
async def cluster(tmp_path: Path, treasury_process: str, credit_url: str, nginx_binary: str) -> AsyncIterator[Cluster]:
    people = {
        name: Caller(name, roles)
        for name, roles in [
            ("platform", ["platform"]),
            ("quota", ["platform"]),
            ("revoked", ["platform"]),
            ("admin", ["admin"]),
        ]
    }
    upstreams = {"credit": credit_url, "treasury": treasury_process}
    master_key = base64.b64encode(os.urandom(32)).decode()
    database_url = await create_test_database()
    try:
        with own_redis() as redis_url:
            settings = load_settings(
                data_dir=tmp_path / "seed",
                database_url=database_url,
                redis_url=redis_url,
                master_key=master_key,
                upstream_urls=upstreams,
            )
            await seed(settings, people)
            env = {k: v for k, v in os.environ.items() if not k.startswith("MSJX_")}
            env.update(
                MSJX_DATABASE_URL=database_url,
                MSJX_REDIS_URL=redis_url,
                MSJX_MASTER_KEY=master_key,
                MSJX_UPSTREAM_URLS=json.dumps(upstreams),
                MSJX_TRUSTED_PROXIES="127.0.0.1",
                MSJX_SIGNATURE_VERIFIER="inline",
                # A voucher whose node died holding its key is resumed by another node once the lease ends:
                # max(this, 5 x the upstream timeout) = 5 s here, instead of 30 s by default.
                MSJX_IDEMPOTENCY_LEASE_SECONDS="3",
                MSJX_UPSTREAM_TIMEOUT="1",
                MSJX_PAYMENT_RECONCILE_SECONDS="2",
                MSJX_LOG_LEVEL="warning",
            )
            platform = people["platform"]
            cluster = Cluster(tmp_path, Deployment(settings, env, platform.key, platform.key_id), nginx_binary)
            cluster.people = people  # type: ignore[attr-defined]
            try:
                await cluster.start()
                yield cluster
            finally:
                cluster.close()
    finally:
        await drop_database(database_url)


class Load:
    """What the clients saw: request ids of acknowledged calls, and each voucher's acknowledged answer."""

    def __init__(self) -> None:
        self.acknowledged: list[str] = []
        self.not_answered = 0  # data calls cut off by the kill (nginx 502): never acknowledged
        self.vouchers: dict[str, dict[str, Any]] = {}  # voucher_no -> its answer's data
        self.voucher_retries = 0
        self.retry_answers: Counter[str] = Counter()
        self.nonce_replayed = 0  # keyed POSTs nginx resent to a node that refused the dead node's nonce
        self.killed = asyncio.Event()
        self.done = asyncio.Event()


async def call_data(cluster: Cluster, auth: SignatureAuth, load: Load, kill: Callable[[], None]) -> None:
    body = orjson.dumps({"purpose": PURPOSE, "params": {"uscc": USCC}})
    async with cluster.client(auth) as http:
        while not load.done.is_set():
            try:
                answer = await http.post(INVOKE, content=body, headers={"content-type": "application/json"})
            except httpx.TransportError:
                raise AssertionError("nginx itself failed") from None
            if answer.status_code in (502, 504):
                assert load.killed.is_set(), f"{answer.status_code} before any node was killed"
                load.not_answered += 1
                continue
            assert answer.status_code == 200, answer.text
            load.acknowledged.append(answer.headers["x-request-id"])
            if len(load.acknowledged) >= ACKS_BEFORE_KILL and not load.killed.is_set():
                load.killed.set()
                kill()
            if len(load.acknowledged) >= ACKS_BEFORE_KILL + ACKS_AFTER_KILL:
                load.done.set()


async def pay_vouchers(cluster: Cluster, auth: SignatureAuth, load: Load, payer: int) -> None:
    """One voucher after another, each sent again under its key until it is answered, as a careful client does."""
    async with cluster.client(auth) as http:
        number = 0
        while not load.done.is_set():
            number += 1
            body = voucher()
            key = f"pay-{payer}-{number}-{body['voucher_no']}"
            content = orjson.dumps({"purpose": PURPOSE, "params": body})
            headers = {"content-type": "application/json", "Idempotency-Key": f'"{key}"'}
            retried = False
            for _ in range(60):
                answer = await http.post(SUBMIT, content=content, headers=headers)
                if answer.status_code == 200:
                    break
                assert load.killed.is_set(), f"{answer.status_code} before any node was killed: {answer.text}"
                if answer.status_code == 401:
                    # nginx sent the request on to another node after the killed one had taken its nonce (shared
                    # in Redis): it is refused, nothing runs twice; signed afresh, it goes on (docs/deploy.md).
                    assert answer.json()["code"] == "nonce_replayed", answer.text
                    load.nonce_replayed += 1
                else:
                    # Cut off by the kill (502), or its key still held by the dead node's lease (409).
                    assert answer.status_code in (409, 502, 503, 504), answer.text
                load.voucher_retries += 1
                problem = answer.json() if answer.headers.get("content-type", "").endswith("json") else {}
                load.retry_answers[f"{answer.status_code} {problem.get('code', '')}".strip()] += 1
                retried = True
                await asyncio.sleep(0.5)
            else:
                raise AssertionError(f"voucher {body['voucher_no']} never answered: {answer.text}")
            load.acknowledged.append(answer.headers["x-request-id"])
            load.vouchers[body["voucher_no"]] = answer.json()["data"]
            if retried:
                # Its stored answer is what any node replays: the same payment, not a second one.
                again = await http.post(SUBMIT, content=content, headers=headers)
                assert again.status_code == 200 and again.json()["data"] == answer.json()["data"], again.text


async def test_three_nodes_behind_nginx_survive_a_kill_9(
    cluster: Cluster, treasury_process: str, record_property: Callable[[str, Any], None]
) -> None:
    people: dict[str, Caller] = cluster.people  # type: ignore[attr-defined]
    platform = people["platform"].auth()
    load = Load()
    data = [call_data(cluster, platform, load, lambda: cluster.kill(1)) for _ in range(CALLERS)]
    payments = [pay_vouchers(cluster, platform, load, payer) for payer in range(PAYERS)]
    await asyncio.wait_for(asyncio.gather(*data, *payments), timeout=120)
    assert load.killed.is_set() and load.vouchers
    record_property("fault", "kill -9 of one of three nodes behind nginx (postgres_redis)")
    record_property("acknowledged", len(load.acknowledged))
    record_property("cut_off", load.not_answered)
    record_property("vouchers", len(load.vouchers))
    record_property("voucher_retries", load.voucher_retries)
    record_property("voucher_retry_answers", dict(load.retry_answers))
    record_property("nonce_replayed_after_nginx_retry", load.nonce_replayed)

    # node-2 comes back (its lease and open intents recovered) and takes its share again.
    await cluster.start_node(1)

    # Quota: DAILY_QUOTA calls succeed in all, whichever node takes them, concurrently; every other is refused.
    quota = people["quota"].auth()
    body = orjson.dumps({"purpose": PURPOSE, "params": {"uscc": USCC}})

    async def quota_calls(node: int) -> list[tuple[int, str | None]]:
        async with cluster.client(quota, node) as http:
            answers = []
            for _ in range(DAILY_QUOTA):
                answer = await http.post(INVOKE, content=body, headers={"content-type": "application/json"})
                answers.append((answer.status_code, None if answer.status_code == 200 else answer.json()["code"]))
                if answer.status_code == 200:
                    load.acknowledged.append(answer.headers["x-request-id"])
            return answers

    quota_answers = [a for answers in await asyncio.gather(*(quota_calls(n) for n in range(NODES))) for a in answers]
    assert sum(1 for status, _ in quota_answers if status == 200) == DAILY_QUOTA, quota_answers
    assert {code for status, code in quota_answers if status != 200} == {"quota_exhausted"}, quota_answers

    # Revocation through node-1: one second later, every node refuses the grant.
    revoked = people["revoked"]
    for node in range(NODES):
        async with cluster.client(revoked.auth(), node) as http:
            warm = await http.post(INVOKE, content=body, headers={"content-type": "application/json"})
            assert warm.status_code == 200, warm.text  # each node now holds the grant in its cache
    async with cluster.client(people["admin"].auth(), 0) as http:
        revoking = await http.post(f"/v1/grants/{revoked.grant_id}/revoke", json={"reason": "test: revoke"})
        assert revoking.status_code == 200, revoking.text
    await asyncio.sleep(1.0)
    for node in range(NODES):
        async with cluster.client(revoked.auth(), node) as http:
            refused = await http.post(INVOKE, content=body, headers={"content-type": "application/json"})
            assert refused.status_code == 403 and refused.json()["code"] == "grant_revoked", (node, refused.text)

    cluster.close()  # the final checkpoints are written; then everything is checked with the nodes stopped
    settings = cluster.deployment.settings

    # Every acknowledged call, data or payment, has its audit record, allowed with status 200.
    found = await recorded(settings, load.acknowledged)
    lost = [request_id for request_id in load.acknowledged if request_id not in found]
    record_property("lost", len(lost))
    assert not lost, f"{len(lost)} of {len(load.acknowledged)} acknowledged calls have no audit record: {lost[:5]}"
    assert {found[request_id] for request_id in load.acknowledged} == {("allowed", 200)}

    # No voucher paid twice: the treasury holds each once, with the serial its client was given.
    listing = await treasury_listing(treasury_process)
    paid = [entry["voucher_no"] for entry in listing["vouchers"]]
    assert len(paid) == len(set(paid)), "a voucher number was paid twice"
    record_property("treasury_submissions_max_per_voucher", max(listing["submissions_per_voucher"].values()))
    assert set(listing["submissions_per_voucher"].values()) == {1}, "a voucher was sent to the treasury twice"
    serials = {entry["voucher_no"]: entry["serial"] for entry in listing["vouchers"]}
    assert set(load.vouchers) <= set(serials)
    assert {no: answer["treasury_serial"] for no, answer in load.vouchers.items()} == {
        no: serials[no] for no in load.vouchers
    }

    # Every chain verifies against the keys the nodes registered: in-process and with the CLI on each node.
    engine = db.create_engine(settings)
    try:
        reports = await verify_all(engine)
    finally:
        await engine.dispose()
    assert {report.chain_id for report in reports} >= {f"node-{index + 1}" for index in range(NODES)}
    assert all(report.ok for report in reports), [report.fault for report in reports]
    for index in range(NODES):
        verified = subprocess.run(
            [CLI, "audit", "verify"],
            env={**cluster.deployment.env, **cluster.node_env(index)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
