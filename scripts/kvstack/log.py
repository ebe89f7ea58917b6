"""Progress lines for long work: one timestamped line per step, on stderr."""

import sys
import time

_T0 = time.monotonic()


def progress(msg: str) -> None:
    """Print one progress line with the seconds since start."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)
