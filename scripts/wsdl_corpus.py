"""The WSDL corpus (tests/contracts/wsdl-corpus/): register each real-world WSDL as `upstreams add` would, and write
the corpus README: which register (with their operations) and which are refused (with the construct named).

A WSDL whose operations require static SOAP header values has a NAME.registration.json beside it: the soap_headers
an operator registers it with (secrets by reference; here each `secret:NAME` stands in as a placeholder string).

    .venv/bin/python scripts/wsdl_corpus.py          # print the table
    .venv/bin/python scripts/wsdl_corpus.py --write  # rewrite tests/contracts/wsdl-corpus/README.md
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from adapters.contracts import ContractError, default_fetcher, gather
from adapters.soap import SoapEngine

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "contracts" / "wsdl-corpus"
README = CORPUS / "README.md"


@dataclass(frozen=True)
class Outcome:
    name: str
    origin: dict[str, str]
    operations: tuple[str, ...]  # empty when refused
    refusal: str | None  # "code: message" when refused
    headers: tuple[str, ...] = ()  # the SOAP header parts given at registration (NAME.registration.json)

    @property
    def registered(self) -> bool:
        return self.refusal is None


def origin(path: Path) -> dict[str, str]:
    fields = {}
    for line in path.with_suffix(".origin").read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(": ")
        fields[key] = value
    return fields


def registration(path: Path) -> dict[str, dict[str, str]]:
    """The SOAP header values an operator registers this WSDL with, secrets replaced by placeholders."""
    sidecar = path.with_suffix(".registration.json")
    if not sidecar.exists():
        return {}
    headers = json.loads(sidecar.read_text(encoding="utf-8"))["soap_headers"]
    return {
        part: {name: ("placeholder" if value.startswith("secret:") else value) for name, value in fields.items()}
        for part, fields in headers.items()
    }


def register(path: Path) -> Outcome:
    """As registration does: gather the bundle (local files only: no fetch by URL), build the SOAP engine."""
    headers = registration(path)
    try:
        bundle = gather("wsdl", path.resolve().as_uri(), default_fetcher(allow_files=True))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zeep warns about WSDL slips it tolerates; the outcome is what counts
            engine = SoapEngine(path.stem, bundle, soap_headers=headers)
    except ContractError as exc:
        return Outcome(path.stem, origin(path), (), f"{exc.code}: {exc}", tuple(headers))
    return Outcome(path.stem, origin(path), tuple(sorted(engine.operations)), None, tuple(headers))


def outcomes() -> list[Outcome]:
    return [register(path) for path in sorted(CORPUS.glob("*.wsdl"))]


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.replace("|", "\\|").split())
    text = text.replace(str(CORPUS.resolve()) + "/", "").replace("file://", "")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def count(results: list[Outcome]) -> str:
    return f"{sum(result.registered for result in results)} of {len(results)} register"


def with_headers(results: list[Outcome]) -> int:
    return sum(result.registered and bool(result.headers) for result in results)


def readme(results: list[Outcome]) -> str:
    lines = [
        "# WSDL corpus: real services' contracts",
        "",
        "Public WSDLs of real services (tax, customs, banking, credit, weather, postal/logistics, public transport and",
        "commercial APIs), each beside a `.origin` file naming its repository, commit, path and licence. `make test`",
        "(tests/test_wsdl_corpus.py) registers every one as `msjx-gateway upstreams add` would, with no fetch by URL,",
        "and checks this table; `scripts/wsdl_corpus.py --write` rewrites it (and docs/adapters.md's).",
        "",
        table(results),
    ]
    return "\n".join(lines)


def table(results: list[Outcome]) -> str:
    lines = [
        f"**{count(results)}** ({with_headers(results)} of them given the static SOAP header values an operator"
        " registers them with, from `NAME.registration.json`). The rest are refused at registration, the construct"
        " named.",
        "",
        "| WSDL | service | sector | licence | outcome |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        if result.registered:
            shown = ", ".join(result.operations[:6]) + (" …" if len(result.operations) > 6 else "")
            given = f" with soap_headers ({', '.join(result.headers)})" if result.headers else ""
            outcome = f"registers{given}: {len(result.operations)} operations ({shown})"
        else:
            outcome = f"refused: {result.refusal}"
        licence = result.origin.get("licence", "?").split(" (")[0].split(",")[0]
        lines.append(
            f"| `{result.name}.wsdl` | {_cell(result.origin.get('service', ''))} | {result.origin.get('sector', '')}"
            f" | {_cell(licence, 60)} | {_cell(outcome)} |"
        )
    return "\n".join(lines) + "\n"


DOCS = CORPUS.parents[2] / "docs" / "adapters.md"
START, END = "<!-- corpus table: scripts/wsdl_corpus.py --write -->", "<!-- end of corpus table -->"


def with_table(document: str, results: list[Outcome]) -> str:
    """docs/adapters.md with the table between its markers replaced."""
    before, _, rest = document.partition(START)
    _, _, after = rest.partition(END)
    return f"{before}{START}\n{table(results)}{END}{after}"


def main() -> int:
    results = outcomes()
    text = readme(results)
    if "--write" in sys.argv:
        README.write_text(text, encoding="utf-8")
        DOCS.write_text(with_table(DOCS.read_text(encoding="utf-8"), results), encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
