"""Start vllm-router (kvstack roles/router) with the arguments given.

The API key the router uses towards the backends comes from the environment
(ROUTER_WORKER_API_KEY), never from the command line, where any local user could read it.
``--check`` parses and validates the arguments with vllm-router's own parser and checks, and
starts nothing (the role runs it before each change).
"""

from __future__ import annotations

import os
import sys

from vllm_router.launch_router import launch_router, parse_router_args


def main(argv: list[str]) -> int:
    check = "--check" in argv
    args = parse_router_args([a for a in argv if a != "--check"])
    key = os.environ.get("ROUTER_WORKER_API_KEY", "")
    if key:
        args.api_key = key
    args._validate_router_args()  # the checks launch_router runs first
    if check:
        print(f"vllm-router arguments OK: policy {args.policy}, {len(args.worker_urls)} backends")
        return 0
    launch_router(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
