"""Start ``lmcache server`` with the KV server's password taken from the environment.

roles/lmcache runs this as the unit's ExecStart, inside the serving venv::

    PYTHONPATH=/opt/kvstack/tools python -m kvstack_node.lmcache_launch server --host 127.0.0.1 ... \
        --l2-adapter '{"type":"valkey",...}'

LMCache 0.5.6's ``valkey`` L2 adapter (the valkey-glide client, which reconnects by itself after
a KV-server restart) takes its credentials only inside the ``--l2-adapter`` JSON. On the
command line the password would be readable by every local user (``ps``, the world-readable
unit file), and LMCache's HTTP ``GET /config`` returns every adapter setting. So the unit's
command line has no credentials, and this launcher, before it hands over to LMCache's own CLI
in the same process:

- adds ``username``/``password`` from ``KVSTACK_KV_USERNAME`` (default ``default``, the only
  name Kvrocks' HELLO accepts) and ``KVSTACK_KV_PASSWORD`` to every ``valkey`` adapter's JSON in
  this Python's ``sys.argv`` (the process's command line stays as systemd started it);
- passes them in the order the installed LMCache hands them on: 0.5.6's worker pool calls
  ``glide_sync.ServerCredentials(username, password)``, whose parameters are
  ``(password, username)``, so they go in swapped there (read from LMCache's source, so a
  release with the fix gets them straight);
- masks credentials in ``GET /config``;
- with the KV tier as a cluster, merges ``KVSTACK_KV_CLUSTER_FILE`` (a JSON object the lmcache
  role writes: the members as ``startup_nodes`` and this node's capacity share) into every valkey
  adapter in ``cluster_mode``, so the unit does not change when the tier grows;
- waits until a valkey adapter's KV server (one of the cluster's members) accepts TCP
  connections (the adapter refuses to start without one), saying so every 30 s, instead of
  exiting and being restarted in a loop.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SECRET_KEYS = ("password", "username")
MASK = "***"
# How LMCache 0.5.6's ValkeyWorkerPool._get_client builds glide's credentials (positionally,
# in the wrong order for glide's ServerCredentials(password, username)).
SWAPPED_CALL = "ServerCredentials(self._username, self._password)"


def lmcache_swaps_credentials() -> bool:
    """Whether the installed LMCache passes the valkey credentials to glide swapped."""
    from lmcache.v1.storage_backend.valkey.worker_pool import ValkeyWorkerPool

    return SWAPPED_CALL in inspect.getsource(ValkeyWorkerPool._get_client)


def adapter_slots(argv: list[str]) -> list[tuple[int, str]]:
    """Where each ``--l2-adapter`` JSON sits in *argv*: (index, prefix before the JSON), for both
    forms, ``--l2-adapter JSON`` (prefix '') and ``--l2-adapter=JSON``."""
    flag = "--l2-adapter"
    slots = [(i + 1, "") for i, a in enumerate(argv[:-1]) if a == flag]
    return slots + [(i, flag + "=") for i, a in enumerate(argv) if a.startswith(flag + "=")]


def with_credentials(argv: list[str], username: str, password: str, swapped: bool) -> list[str]:
    """*argv* with *username*/*password* in every valkey ``--l2-adapter`` JSON; other arguments
    unchanged."""
    out = list(argv)
    for i, prefix in adapter_slots(argv):
        out[i] = prefix + _adapter_with(out[i][len(prefix) :], username, password, swapped)
    return out


def _adapter_with(text: str, username: str, password: str, swapped: bool) -> str:
    cfg = json.loads(text)
    if cfg.get("type") != "valkey" or not password:
        return text
    if any(cfg.get(k) for k in SECRET_KEYS):
        raise SystemExit("lmcache_launch: credentials belong in the environment, not in --l2-adapter")
    cfg["username"], cfg["password"] = (password, username) if swapped else (username, password)
    return json.dumps(cfg, separators=(",", ":"))


def with_cluster_settings(argv: list[str], settings: dict[str, Any]) -> list[str]:
    """*argv* with *settings* merged into every valkey ``--l2-adapter`` JSON in ``cluster_mode``."""
    out = list(argv)
    for i, prefix in adapter_slots(argv):
        cfg = json.loads(out[i][len(prefix) :])
        if cfg.get("type") == "valkey" and cfg.get("cluster_mode"):
            out[i] = prefix + json.dumps({**cfg, **settings}, separators=(",", ":"))
    return out


def kv_servers(argv: list[str]) -> list[tuple[str, int]]:
    """(host, port) of every valkey adapter's startup nodes."""
    out = []
    for i, prefix in adapter_slots(argv):
        cfg = json.loads(argv[i][len(prefix) :])
        if cfg.get("type") == "valkey":
            for node in str(cfg.get("startup_nodes", "")).split(","):
                host, _, port = node.strip().rpartition(":")
                out.append((host.strip("[]"), int(port)))
    return out


def wait_reachable(servers: list[tuple[str, int]], say: Callable[[str], None], every_s: float = 30.0) -> None:
    """Block until one of *servers* (a cluster's members, or the one server) accepts a TCP
    connection, saying every *every_s* which ones it waits for."""
    last = 0.0
    while True:
        errors = []
        for host, port in servers:
            try:
                socket.create_connection((host, port), timeout=5).close()
                return
            except OSError as e:
                errors.append(f"{host}:{port} ({e})")
        if time.monotonic() - last >= every_s:
            say(f"lmcache_launch: waiting for the KV server at {', '.join(errors)}")
            last = time.monotonic()
        time.sleep(2)


def masked(value: Any) -> Any:
    """*value* with every credential key of every nested dict replaced by ``***``."""
    if isinstance(value, dict):
        return {k: MASK if k in SECRET_KEYS and v else masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [masked(v) for v in value]
    return value


def mask_config_api() -> None:
    """Make LMCache's ``GET /config`` mask credentials (it serialises with these two helpers)."""
    from lmcache.v1.multiprocess.http_apis import config_api

    for name in ("safe_asdict", "make_json_safe"):
        original = getattr(config_api, name)
        setattr(config_api, name, lambda x, _f=original: masked(_f(x)))


def main() -> None:
    """Prepare ``sys.argv`` as described above and run LMCache's CLI."""
    argv = sys.argv[1:]
    password = os.environ.pop("KVSTACK_KV_PASSWORD", "")
    username = os.environ.pop("KVSTACK_KV_USERNAME", "") or "default"
    cluster_file = os.environ.pop("KVSTACK_KV_CLUSTER_FILE", "")
    if cluster_file:
        argv = with_cluster_settings(argv, json.loads(Path(cluster_file).read_text()))
    servers = kv_servers(argv)
    if servers:
        wait_reachable(servers, lambda s: print(s, file=sys.stderr, flush=True))
        if password:
            argv = with_credentials(argv, username, password, lmcache_swaps_credentials())
    mask_config_api()
    from lmcache.cli.main import main as lmcache_main

    sys.argv = ["lmcache", *argv]
    lmcache_main(argv)


if __name__ == "__main__":
    main()
