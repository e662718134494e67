"""Which answers are tried again, and the pauses before each try."""

from __future__ import annotations

import pytest

from receiver.retry import pauses, transient


@pytest.mark.parametrize(("status", "again"), [(429, True), (500, True), (503, True),
                                               (599, True), (200, False), (400, False),
                                               (404, False), (413, False)])  # fmt: skip
def test_transient(status: int, again: bool) -> None:
    assert transient(status) is again


def test_pauses_double_up_to_the_most() -> None:
    assert list(pauses(5, 0.5, 5)) == [0.0, 0.5, 1.0, 2.0, 4.0, 5.0]
    assert list(pauses(0, 0.5, 5)) == [0.0]  # one try, no pause
