"""Progress lines for long work: one timestamped line per step, on stderr."""

import sys
import time

_T0 = time.monotonic()


def progress(msg: str) -> None:
    """Print one progress line with the seconds since start."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def brief(e: BaseException, limit: int = 300) -> str:
    """``Type: message`` of an exception, first non-empty line only, at most *limit* characters."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
