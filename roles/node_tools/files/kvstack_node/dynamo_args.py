"""Check a Dynamo command line with Dynamo's own argument parser, without starting anything.

Run inside the venv holding ai-dynamo (and vLLM, for a worker)::

    python -m kvstack_node.dynamo_args [--frontend] -- ARGS...

Without ``--frontend``, ARGS are what ``python -m dynamo.vllm`` (the vLLM worker) would get: they
go through ``dynamo.vllm.args.parse_args``, the function the worker's ``main()`` calls, i.e.
Dynamo's own flags, every vLLM engine flag (vLLM's parser, embedded) and Dynamo's cross-checks
(e.g. it rejects ``--connector``). It imports vLLM but starts no engine and loads no model (about
8 s on a CPU). With ``--frontend``, ARGS are ``python -m dynamo.frontend``'s: they go through
``dynamo.frontend.main.parse_args`` (argparse, ``FrontendConfig.validate``, unknown flags refused).

Exit status: 0 and a JSON summary on stdout when Dynamo accepts the arguments; 2 when the parser
rejects them (argparse's usage and error on stderr); 1 when a later check rejects them (an error
on stderr). Logging goes to stderr, so stdout is only the JSON.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

FRONTEND_FIELDS = (
    "http_host",
    "http_port",
    "router_mode",
    "discovery_backend",
    "request_plane",
    "event_plane",
)


def check_worker(argv: list[str]) -> dict:
    """Parse and validate *argv* the way ``python -m dynamo.vllm`` does; raises on refusal."""
    from dynamo.vllm.args import parse_args

    config = parse_args(argv)
    engine = config.engine_args
    kvt = getattr(engine, "kv_transfer_config", None)
    events = getattr(engine, "kv_events_config", None)
    return {
        "model": str(engine.model),
        "served_model_name": engine.served_model_name,
        "dtype": str(engine.dtype),
        "max_model_len": engine.max_model_len,
        "enable_prefix_caching": engine.enable_prefix_caching,
        "kv_connector": getattr(kvt, "kv_connector", None) if kvt else None,
        "kv_events": bool(events and getattr(events, "enable_kv_cache_events", False)),
        "kv_events_endpoint": getattr(events, "endpoint", None) if events else None,
        "namespace": getattr(config, "namespace", None),
        "component": getattr(config, "component", None),
        "discovery_backend": getattr(config, "discovery_backend", None),
        "request_plane": getattr(config, "request_plane", None),
        "event_plane": getattr(config, "event_plane", None),
    }


def check_frontend(argv: list[str]) -> dict:
    """Parse and validate *argv* the way ``python -m dynamo.frontend`` does; raises on refusal."""
    from dynamo.frontend.main import parse_args  # reads sys.argv

    saved = sys.argv
    sys.argv = ["dynamo.frontend", *argv]
    try:
        config, _, _ = parse_args()
    finally:
        sys.argv = saved
    return {f: getattr(config, f, None) for f in FRONTEND_FIELDS}


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    argv = sys.argv[1:] if argv is None else argv
    frontend = False
    while argv and argv[0] != "--":
        if argv[0] != "--frontend":
            print(f"usage: dynamo_args [--frontend] -- ARGS (unknown option {argv[0]})", file=sys.stderr)
            return 2
        frontend, argv = True, argv[1:]
    argv = argv[1:] if argv[:1] == ["--"] else argv
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        try:
            result: Any = check_frontend(argv) if frontend else check_worker(argv)
        except SystemExit as exc:  # argparse (2) or Dynamo's own refusal (1) already printed why
            return exc.code if isinstance(exc.code, int) and exc.code else 2
        except Exception as exc:
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    json.dump(result, out, default=str, indent=1, sort_keys=True)
    out.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
