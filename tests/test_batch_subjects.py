"""A batch upload's check on the event loop: the same subjects and the same numbered errors as the one-go check, a
slice of lines at a time, with other tasks served between slices."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel, Field

from gateway.batches import subjects as subjects_module
from gateway.batches.subjects import Target, parse_subjects, parse_upload
from gateway.http.problems import Problem
from simulators.enterprises import register_uscc


class YearInput(BaseModel):
    uscc: str
    year: int = Field(ge=2000, le=2100)


def usccs(count: int) -> list[str]:
    return [register_uscc(index) for index in range(count)]


TARGETS = [Target("golden-tax/tax-credit-rating", YearInput, {"year": 2025})]


def _csv(lines: list[str]) -> bytes:
    return ("uscc,year\n" + "\n".join(lines) + "\n").encode()


def _problem_lines(problem: Problem) -> list[tuple[int, str]]:
    return [(error["line"], error["type"]) for error in problem.errors or []]


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subjects_module, "UPLOAD_SLICE", 3)


@pytest.mark.usefixtures("small_slices")
@pytest.mark.parametrize("media_type", ["text/csv", "application/x-ndjson"])
async def test_an_upload_checked_in_slices_gives_what_the_one_go_check_gives(media_type: str) -> None:
    good = usccs(8)
    if media_type == "text/csv":
        body = _csv([f"{uscc}," for uscc in good])
    else:
        body = b"".join(b'{"uscc": "%s"}\n' % uscc.encode() for uscc in good)
    expected = parse_subjects(inline=None, body=body, media_type=media_type, targets=TARGETS)
    assert await parse_upload(body, media_type, TARGETS) == expected
    assert [uscc for uscc, _ in expected] == good


@pytest.mark.usefixtures("small_slices")
async def test_bad_lines_keep_their_numbers_across_slices() -> None:
    good = usccs(6)
    broken = good[0][:-1] + ("0" if good[0][-1] != "0" else "1")
    # line 1 is the header; 3 repeats 2, 6 has a bad check character, 8 a year out of range, 9 a column too many
    lines = [f"{good[0]},", f"{good[0]},", f"{good[1]},", f"{good[2]},", f"{broken},", f"{good[3]},"]
    lines += [f"{good[4]},1900", f"{good[5]},2024,x"]
    body = _csv(lines)
    with pytest.raises(Problem) as one_go:
        parse_subjects(inline=None, body=body, media_type="text/csv", targets=TARGETS)
    with pytest.raises(Problem) as sliced:
        await parse_upload(body, "text/csv", TARGETS)
    assert _problem_lines(sliced.value) == _problem_lines(one_go.value)
    assert _problem_lines(sliced.value) == [
        (3, "duplicate"),
        (6, "uscc_invalid"),
        (8, "greater_than_equal"),
        (9, "column_count"),
    ]


@pytest.mark.usefixtures("small_slices")
async def test_a_file_over_the_line_limit_stops_at_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subjects_module, "MAX_LINES", 5)
    body = _csv([f"{uscc}," for uscc in usccs(9)])
    with pytest.raises(Problem) as refused:
        await parse_upload(body, "text/csv", TARGETS)
    assert _problem_lines(refused.value) == [(7, "too_many_subjects")]  # the 6th subject, on line 7


async def test_other_tasks_run_while_an_upload_is_checked() -> None:
    lines = [f"{uscc}," for uscc in usccs(1_000)]
    body = _csv(lines)
    turns = 0
    checking = True

    async def ticker() -> None:
        nonlocal turns
        while checking:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    started = turns
    subjects = await parse_upload(body, "text/csv", TARGETS)
    checking = False
    await task
    assert len(subjects) == 1_000
    # One turn of the other task at least between slices (1,000 lines in slices of UPLOAD_SLICE).
    assert turns - started >= 1_000 // subjects_module.UPLOAD_SLICE - 1


async def test_threads_get_their_turns_while_an_upload_is_checked() -> None:
    """The database driver's threads (aiosqlite) need the GIL for each step. With the check only yielding to the
    loop, a thread finished 2 steps during the whole check of 20,000 lines, and a directory reload took a second;
    with the check's pauses it finished over 300 (the assertion asks for half as many as there are pauses)."""
    body = _csv([f"{uscc}," for uscc in usccs(20_000)])
    steps = 0
    checking = True

    async def thread_steps() -> None:
        nonlocal steps
        while checking:
            await asyncio.to_thread(sum, range(10))
            steps += 1

    task = asyncio.create_task(thread_steps())
    await asyncio.sleep(0)
    await parse_upload(body, "text/csv", TARGETS)
    checking = False
    await task
    pauses = 20_000 // subjects_module.UPLOAD_SLICE // subjects_module.UPLOAD_PAUSE_EVERY
    assert steps >= pauses // 2, f"{steps} thread steps during {pauses} pauses"


def test_a_nul_character_in_a_parameter_is_a_line_error() -> None:
    good = usccs(2)
    body = f'{{"uscc": "{good[0]}", "year": 2024}}\n{{"uscc": "{good[1]}", "year": "20\\u000024"}}\n'.encode()
    with pytest.raises(Problem) as refused:
        parse_subjects(inline=None, body=body, media_type="application/x-ndjson", targets=TARGETS)
    assert [(error["line"], error["field"], error["type"]) for error in refused.value.errors or []] == [
        (2, "year", "nul_character")
    ]
