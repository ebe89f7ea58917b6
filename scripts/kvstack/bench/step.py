"""The protocol every bench step implements (the measured run they share: :mod:`kvstack.measure`)."""

from __future__ import annotations

from typing import Any, Protocol

from kvstack.bench.context import Context
from kvstack.bench.options import BenchOptions


class Step(Protocol):
    """One part of a bench run (the matrix, the probe, the data path, ...)."""

    #: the name results.json's "missing" notes use when the step fails
    name: str
    #: False: a failure stops the run; True: it is noted as missing and the run goes on
    optional: bool

    def enabled(self, o: BenchOptions) -> bool:
        """Whether *o* asks for this step."""
        ...

    def planned(self, ctx: Context) -> dict[str, Any]:
        """What the step will do, for results.json's ``plan`` (before anything runs)."""
        ...

    def run(self, ctx: Context) -> None:
        """Measure, writing into ``ctx.res`` as it goes (a failure keeps what was written)."""
        ...
