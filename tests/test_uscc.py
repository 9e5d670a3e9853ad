"""统一社会信用代码: the check character, every kind of error message, and the pydantic type."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from schemas.uscc import USCC, USCC_ALPHABET, check_character, is_valid_uscc, make_uscc, uscc_error

VALID = [
    "91110000600037341L",  # GB 32100's own example family, quoted in DOMAIN.md
    "91350100M000100Y43",  # DOMAIN.md's invalid code with its check character corrected
    "91350200MA2Y0K1X8" + check_character("91350200MA2Y0K1X8"),
    "A1110000600037341" + check_character("A1110000600037341"),  # registering authority A
    "N2350200MA2Y0K1X8" + check_character("N2350200MA2Y0K1X8"),  # registering authority N
    "Y1350200MA2Y0K1X8" + check_character("Y1350200MA2Y0K1X8"),  # registering authority Y
]


class Company(BaseModel):
    uscc: USCC


def test_alphabet_is_gb32100() -> None:
    assert len(USCC_ALPHABET) == 31
    assert not set("IOSVZ") & set(USCC_ALPHABET)


@pytest.mark.parametrize("code", VALID)
def test_valid_codes(code: str) -> None:
    assert uscc_error(code) is None
    assert is_valid_uscc(code)


def test_known_check_characters() -> None:
    assert check_character("91110000600037341") == "L"
    assert check_character("91350100M000100Y4") == "3"
    # A sum divisible by 31 gives 31, written as 0.
    assert check_character("00000000000000000") == "0"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("91350100M000100Y4Z", "check character should be '3', not 'Z'"),
        ("91110000600037341K", "check character should be 'L', not 'K'"),
        ("91110000600037341", "must be 18 characters, got 17"),
        ("91110000600037341LL", "must be 18 characters, got 19"),
        ("", "must be 18 characters, got 0"),
        ("9111I000600037341L", "character 'I' at position 5 is not allowed"),
        ("911100006000O7341L", "character 'O' at position 13 is not allowed"),
        ("91110000-00037341L", "character '-' at position 9 is not allowed"),
        ("91110000600037341l", "character 'l' at position 18 is lower case"),
        ("91350200ma2y0k1x8" + "B", "character 'm' at position 9 is lower case"),
        (91110000600037341, "must be a string, not int"),
    ],
)
def test_error_messages(value: object, message: str) -> None:
    error = uscc_error(value)
    assert error is not None
    assert message in error
    assert not is_valid_uscc(value)


def test_lowercase_is_an_error_not_a_correction() -> None:
    assert is_valid_uscc("91110000600037341L")
    assert not is_valid_uscc("91110000600037341L".lower())


def test_make_uscc_from_parts() -> None:
    assert make_uscc("91", "110000", "600037341") == "91110000600037341L"
    assert make_uscc("91110000600037341") == "91110000600037341L"


@pytest.mark.parametrize("first17", ["9111000060003734", "911100006000373411", "9111I000600037341"])
def test_check_character_rejects_bad_input(first17: str) -> None:
    with pytest.raises(ValueError, match=r"17 characters|not allowed"):
        check_character(first17)


@given(st.text(alphabet=USCC_ALPHABET, min_size=17, max_size=17), st.sampled_from(USCC_ALPHABET))
def test_make_uscc_is_valid_and_any_other_check_character_is_not(first17: str, other: str) -> None:
    code = make_uscc(first17)
    assert len(code) == 18
    assert is_valid_uscc(code)
    if other != code[-1]:
        assert uscc_error(first17 + other) == f"check character should be '{code[-1]}', not '{other}'"


@given(
    st.text(alphabet=USCC_ALPHABET, min_size=17, max_size=17),
    st.integers(min_value=0, max_value=16),
    st.sampled_from(USCC_ALPHABET),
)
def test_changing_one_body_character_is_caught(first17: str, position: int, replacement: str) -> None:
    # Weights are distinct and non-zero mod a prime, so a single substitution always moves the check character.
    code = make_uscc(first17)
    changed = code[:position] + replacement + code[position + 1 :]
    assert is_valid_uscc(changed) == (changed == code)


def test_pydantic_type_accepts_a_valid_code() -> None:
    assert Company(uscc="91110000600037341L").uscc == "91110000600037341L"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("91350100M000100Y4Z", "check character should be '3', not 'Z'"),
        ("91110000600037341l", "is lower case"),
        ("9111000060003734", "must be 18 characters"),
    ],
)
def test_pydantic_type_rejects(value: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Company(uscc=value)
    errors = caught.value.errors()
    assert errors[0]["loc"] == ("uscc",)
    assert message in errors[0]["msg"]


def test_pydantic_type_does_not_coerce_numbers() -> None:
    with pytest.raises(ValidationError):
        Company(uscc=911100006000373410)  # type: ignore[arg-type]


def test_pydantic_type_json_schema() -> None:
    schema = Company.model_json_schema()["properties"]["uscc"]
    assert schema["minLength"] == schema["maxLength"] == 18
    allowed = re.compile(schema["pattern"].replace("{18}", ""))
    assert [c for c in map(chr, range(32, 127)) if allowed.fullmatch(c)] == sorted(USCC_ALPHABET)
