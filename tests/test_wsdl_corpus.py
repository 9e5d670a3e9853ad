"""The corpus of real WSDLs: each registers and lists its operations, or is refused naming the construct; the corpus
README's table and its "N of M register" are what registration does today."""

from __future__ import annotations

import pytest

from scripts.wsdl_corpus import CORPUS, DOCS, README, count, outcomes, readme, with_table

pytestmark = pytest.mark.slow
REFUSAL_CODES = ("contract_unsupported", "contract_invalid", "contract_unreachable", "contract_fetch_forbidden")


def test_every_wsdl_has_its_origin_and_licence() -> None:
    wsdls = sorted(CORPUS.glob("*.wsdl"))
    assert len(wsdls) >= 25
    for path in wsdls:
        origin = path.with_suffix(".origin").read_text(encoding="utf-8")
        for field in ("service:", "repository: https://github.com/", "commit:", "path:", "licence:"):
            assert field in origin, f"{path.name}: {field}"


def test_each_registers_or_is_refused_naming_the_construct_and_the_readme_says_so() -> None:
    results = outcomes()
    for result in results:
        if result.registered:
            assert result.operations, result.name
        else:
            assert result.refusal is not None and result.refusal.split(":")[0] in REFUSAL_CODES, result
            assert (
                " at " in result.refusal
                or " in " in result.refusal
                or "refers to" in result.refusal
                or ("fetch" in result.refusal)
            ), f"{result.name}: the refusal names neither construct nor place: {result.refusal}"
    assert README.read_text(encoding="utf-8") == readme(results), "run scripts/wsdl_corpus.py --write"
    docs = DOCS.read_text(encoding="utf-8")
    assert docs == with_table(docs, results), "run scripts/wsdl_corpus.py --write"
    assert f"{count(results)}" in (CORPUS.parents[2] / "README.md").read_text(encoding="utf-8")
