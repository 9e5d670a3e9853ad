"""统一社会信用代码 (unified social credit code, GB 32100-2015): the check character, validation and a pydantic type.

This is the one implementation of the algorithm in the project; everything else imports it.
"""

from __future__ import annotations

from functools import lru_cache
from operator import mul
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema

__all__ = [
    "USCC",
    "USCC_ALPHABET",
    "USCC_LENGTH",
    "check_character",
    "is_valid_uscc",
    "make_uscc",
    "uscc_error",
]

# GB 32100 drops I, O, S, V and Z, which are too easily read as 1, 0, 5, U and 2.
USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
USCC_LENGTH = 18

_VALUES = {char: value for value, char in enumerate(USCC_ALPHABET)}
_CHARS = frozenset(USCC_ALPHABET)
_MODULUS = len(USCC_ALPHABET)  # 31
# Weight of position i (1-based) is 3^(i-1) mod 31: 1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28.
_WEIGHTS = tuple(pow(3, i, _MODULUS) for i in range(USCC_LENGTH - 1))
_ALPHABET_HINT = "the code uses 0-9 and A-Y without I, O, S, V and Z"


def _lower_case_error(char: str, position: int) -> str:
    return f"character '{char}' at position {position} is lower case; the code is written in upper case"


def _body_error(body: str) -> str | None:
    """Why a string cannot be the first characters of a code, or None; positions are 1-based."""
    if _CHARS.issuperset(body):
        return None
    for position, char in enumerate(body, start=1):
        if char in _VALUES:
            continue
        if char.islower() and char.upper() in _VALUES:
            return _lower_case_error(char, position)
        return f"character '{char}' at position {position} is not allowed ({_ALPHABET_HINT})"
    return None


def _check_character(body: str) -> str:
    # map() rather than a generator: validated on every call and in batches of hundreds of thousands.
    total = sum(map(mul, map(_VALUES.__getitem__, body), _WEIGHTS))
    return USCC_ALPHABET[(_MODULUS - total % _MODULUS) % _MODULUS]


def check_character(first17: str) -> str:
    """The 18th character of the code whose first 17 characters are `first17`.

    Raises ValueError if `first17` is not 17 characters of the code's alphabet.
    """
    if len(first17) != USCC_LENGTH - 1:
        raise ValueError(f"need the first 17 characters of the code, got {len(first17)}")
    error = _body_error(first17)
    if error is not None:
        raise ValueError(error)
    return _check_character(first17)


def uscc_error(value: object) -> str | None:
    """None if `value` is a valid code, else an English sentence saying what is wrong with it."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if len(value) != USCC_LENGTH:
        return f"must be 18 characters, got {len(value)}"
    return _code_error(value)


# One call checks a code several times (the request, the upstream's input and output models, the audit's subject):
# the same few codes again and again, so the answers are kept. 8,192 codes are about 1.4 MB.
@lru_cache(maxsize=8192)
def _code_error(value: str) -> str | None:
    error = _body_error(value[:-1])
    if error is not None:
        return error
    # A wrong 18th character is reported as a wrong check character (the useful fact), even when it is
    # outside the alphabet, unless it is merely lower case.
    last = value[-1]
    if last.islower() and last.upper() in _VALUES:
        return _lower_case_error(last, USCC_LENGTH)
    expected = _check_character(value[:-1])
    if value[-1] != expected:
        return f"check character should be '{expected}', not '{value[-1]}'"
    return None


def is_valid_uscc(value: object) -> bool:
    """True if `value` is an 18-character code with a correct check character."""
    return uscc_error(value) is None


def make_uscc(*parts: str) -> str:
    """Build a valid code from its first 17 characters, given whole or in parts.

    `make_uscc("91", "350200", "MA2Y0K1X8")` appends the check character to "91350200MA2Y0K1X8".
    """
    body = "".join(parts)
    return body + check_character(body)


def _validate(value: str) -> str:
    error = uscc_error(value)
    if error is not None:
        raise ValueError(f"not a valid unified social credit code: {error}")
    return value


USCC = Annotated[
    str,
    AfterValidator(_validate),
    WithJsonSchema(
        {
            "type": "string",
            "title": "USCC",
            "description": "统一社会信用代码 (GB 32100-2015): 18 characters, upper case, with a valid check character",
            "minLength": USCC_LENGTH,
            "maxLength": USCC_LENGTH,
            "pattern": "^[0-9A-HJ-NPQRTUWXY]{18}$",
            "examples": ["91110000600037341L"],
        }
    ),
]
"""A pydantic field type: a valid code, rejected (never corrected) otherwise."""
