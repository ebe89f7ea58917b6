"""The one wait-until loop: poll a check until it holds or a deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout_s: float, every_s: float, failure: Callable[[], str]) -> T:
    """Call *check* every *every_s* seconds until it returns something true, and return that;
    after *timeout_s* raise TimeoutError with *failure()*'s text (it may say what was seen last).
    The check runs at least once, also with a zero timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(failure())
        time.sleep(every_s)
