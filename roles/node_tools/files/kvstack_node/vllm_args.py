"""Check a vLLM server command line with vLLM's own argument parser, without starting a server.

Run inside the vLLM venv::

    python -m kvstack_node.vllm_args [--engine-config] -- --model /srv/model --dtype float32 ...

The arguments after ``--`` are what ``python -m vllm.entrypoints.launchers.api_server.entry`` (the
units' entry point; the deprecated ``vllm.entrypoints.openai.api_server`` runs it too) would get. They
go through the same steps as its ``main()``: ``FlexibleArgumentParser`` + ``make_arg_parser`` +
``validate_parsed_serve_args`` (``vllm.entrypoints.launchers.cli_args`` in vLLM 0.32). With
``--engine-config`` it also builds the full engine configuration (``create_engine_config``), which
reads the model's ``config.json`` and catches what only shows then (e.g. ``--max-model-len`` above
the model's limit); that needs the model directory and takes seconds.

Exit status: 0 and the parsed namespace as JSON on stdout when vLLM accepts the arguments; 2 when
the parser rejects them (vLLM's usage and error on stderr); 1 when a later check rejects them
(``error: ...`` on stderr). vLLM's own logging goes to stderr, so stdout is only the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import json
import sys
from typing import Any


def _jsonable(value: Any) -> Any:
    """JSON fallback for the values vLLM puts in its namespace (pydantic configs, enums, paths)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def check(argv: list[str], *, engine_config: bool = False) -> argparse.Namespace:
    """Parse and validate *argv* the way vLLM's API server does; raises ``SystemExit`` or ``Exception``."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm api_server"))
    args = parser.parse_args(argv)
    validate_parsed_serve_args(args)
    if engine_config:
        from vllm.engine.arg_utils import AsyncEngineArgs

        if args.model_tag is not None:
            args.model = args.model_tag
        AsyncEngineArgs.from_cli_args(args).create_engine_config()
    return args


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    argv = sys.argv[1:] if argv is None else argv
    ours, theirs = _split(argv)
    p = argparse.ArgumentParser(prog="python -m kvstack_node.vllm_args", description=__doc__.split("\n")[0])
    p.add_argument("--engine-config", action="store_true", help="also build the full engine config")
    opts = p.parse_args(ours)
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        try:
            args = check(theirs, engine_config=opts.engine_config)
        except SystemExit as exc:  # argparse already printed usage and error
            return exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    json.dump(vars(args), out, default=_jsonable, indent=1, sort_keys=True)
    out.write("\n")
    return 0


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split at the first ``--``: our options before it, vLLM's after (all vLLM's without one)."""
    if "--" not in argv:
        return [], argv
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]


if __name__ == "__main__":
    raise SystemExit(main())
