"""Check an ``lmcache server`` command line with LMCache's own parser, without starting a server.

Run inside the serving venv (roles/lmcache copies it to the node)::

    python lmcache_args.py [--device cuda] -- --host 127.0.0.1 --port 5555 --chunk-size 256 ...

The arguments after ``--`` are what ``lmcache server`` gets. They go through the same steps as
``lmcache.cli.commands.server.ServerCommand``: its ``add_arguments`` builds the parser, then the
multi-process, storage-manager (L1, L2 adapters) and observability configs are built from the
namespace, as ``execute`` does before it starts the server. With ``--device`` it also asks
LMCache's device registry which transfer mode that device's vLLM connector picks when the
engine side says ``auto`` (``DeviceSpec.default_mp_transfer_mode``), the mode the server must
accept.

Exit status: 0 and the configuration as JSON on stdout when LMCache accepts the arguments; 2 when
the parser rejects them (its usage and error on stderr); 1 when building a config fails
(``error: ...`` on stderr). LMCache's logging goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any


def check(argv: list[str], device: str | None = None) -> dict[str, Any]:
    """Parse *argv* as ``lmcache server`` does; the parts of its config the roles depend on."""
    from lmcache.cli.commands.server import ServerCommand
    from lmcache.v1.distributed.config import parse_args_to_config
    from lmcache.v1.mp_observability.config import parse_args_to_observability_config
    from lmcache.v1.multiprocess.config import parse_args_to_mp_server_config

    parser = argparse.ArgumentParser(prog="lmcache server")
    ServerCommand().add_arguments(parser)
    args = parser.parse_args(argv)
    mp = parse_args_to_mp_server_config(args)
    storage = parse_args_to_config(args)
    parse_args_to_observability_config(args)
    adapters = storage.l2_adapter_config.adapters
    out: dict[str, Any] = {
        "supported_transfer_mode": mp.supported_transfer_mode,
        "max_gpu_workers": mp.max_gpu_workers,
        "chunk_size": mp.chunk_size,
        "shm_name": mp.shm_name,
        "l2_adapters": [type(c).__name__ for c in adapters],
        # What bounds each adapter: LMCache's own accounting, its eviction policy, the keys' TTL.
        "l2_max_capacity_gb": [getattr(c, "max_capacity_gb", 0.0) for c in adapters],
        "l2_eviction": [getattr(c.eviction_config, "eviction_policy", None) for c in adapters],
        "l2_ttl_seconds": [getattr(c, "ttl_seconds", None) for c in adapters],
    }
    if device:
        from lmcache.v1.platform._device_detect import get_device_spec

        spec = get_device_spec(device)
        out["device"] = device
        out["connector_auto_mode"] = spec.default_mp_transfer_mode().value if spec else "engine_driven"
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: ``[--device D] -- ARGS...``; see the module docstring."""
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(prog="lmcache_args")
    p.add_argument("--device", default=None, help="also report this device's connector default mode")
    opts = p.parse_args(argv[:split])
    try:
        with contextlib.redirect_stdout(sys.stderr):
            out = check(argv[split + 1 :], opts.device)
    except SystemExit as e:
        return 2 if e.code else 0
    except Exception as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
