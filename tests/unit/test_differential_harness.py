"""The differential harness itself, with canned responses instead of servers: what fails a test, and when.

The ``tpms`` fixture ends with ``verified``: a difference that a test recorded
and never reported with ``assert_identical()`` fails the test at teardown.
"""

from __future__ import annotations

import pytest

from support.differential import Difference, Differential, verified

GET_RANDOM = bytes.fromhex("80010000000c0000017b0008")
SUCCESS_8 = bytes.fromhex("80010000001400000000") + bytes.fromhex("00080102030405060708")
OTHER_8 = bytes.fromhex("80010000001400000000") + bytes.fromhex("00088877665544332211")
RC_VALUE = bytes.fromhex("80010000000a000001c4")
Failed = pytest.fail.Exception


class CannedDifferential(Differential):
    """Answers each step from a table per server instead of sending it."""

    def __init__(self) -> None:
        super().__init__(ours="vtpm", ref="swtpm")  # type: ignore[arg-type]  (only the labels are used)
        self.answers: dict[str, bytes] = {}

    def _send(self, server, name: str, command: bytes, timeout: float) -> bytes | str:  # noqa: ANN001
        return self.answers[server]


def fixture_with(**answers: bytes):
    """A started ``verified`` fixture body and its harness, answering ``answers`` (vtpm=..., swtpm=...)."""
    diff = CannedDifferential()
    diff.answers.update(answers)
    teardown = verified(diff)
    assert next(teardown) is diff
    return diff, teardown


def finish(teardown) -> None:  # noqa: ANN001
    """Run the fixture's teardown as pytest does."""
    with pytest.raises(StopIteration):
        next(teardown)


def test_a_recorded_difference_fails_at_teardown_without_assert_identical() -> None:
    diff, teardown = fixture_with(vtpm=SUCCESS_8, swtpm=OTHER_8)
    diff.check("GetRandom 8", GET_RANDOM)
    with pytest.raises(Failed, match=r"1 of 1 commands differ(.|\n)*\[GetRandom 8\] responses differ"):
        next(teardown)


def test_a_reference_surprise_fails_at_teardown() -> None:
    diff, teardown = fixture_with(vtpm=RC_VALUE, swtpm=RC_VALUE)
    diff.check("GetRandom 8", GET_RANDOM, ref_rc=0)
    with pytest.raises(Failed, match="the reference did not behave as the steps assume"):
        next(teardown)


def test_identical_responses_and_accepted_deviations_pass() -> None:
    diff, teardown = fixture_with(vtpm=SUCCESS_8, swtpm=SUCCESS_8)
    diff.check("GetRandom 8, identical", GET_RANDOM, ref_rc=0)
    diff.answers["vtpm"] = OTHER_8
    diff.check("GetRandom 8, response code only", GET_RANDOM, mode="rc", ref_rc=0)  # same code, other bytes
    diff._send(diff.ours, "a probe of one server", GET_RANDOM, 10.0)  # compared by the test itself, not recorded
    assert diff.differences == [] and diff.steps == 2
    diff.assert_identical()
    finish(teardown)


def test_an_explicit_assert_identical_still_fails_and_is_not_repeated_at_teardown() -> None:
    diff, teardown = fixture_with(vtpm=SUCCESS_8, swtpm=RC_VALUE)
    diff.check("GetRandom 8", GET_RANDOM, mode="rc")
    with pytest.raises(Failed, match=r"\[GetRandom 8\] response codes differ"):
        diff.assert_identical()
    finish(teardown)  # already reported: the test failed once, not twice


def test_a_difference_after_a_passing_assert_identical_fails_at_teardown() -> None:
    diff, teardown = fixture_with(vtpm=SUCCESS_8, swtpm=SUCCESS_8)
    diff.check("GetRandom 8", GET_RANDOM)
    diff.assert_identical()
    diff.differences.append(Difference("a later step", GET_RANDOM, SUCCESS_8, OTHER_8, "bytes"))
    with pytest.raises(Failed, match=r"\[a later step\]"):
        next(teardown)
