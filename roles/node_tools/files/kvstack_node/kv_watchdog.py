"""LMCache KV-tier reconnect watchdog (kvstack roles/lmcache), run by a systemd timer.

LMCache 0.5.6's RESP L2 adapter connects once, at start, and never reconnects: after a KV server
restart (or when LMCache started before the KV server was up) its stores and lookups through
the KV tier stop for good while serving goes on from node DRAM and recompute. This check asks
the KV server for its client list; when LMCache has been up longer than the grace period, the KV
server answers, and none of its clients comes from this node's address, it restarts LMCache
(vLLM's units, PartOf it, restart with it). Python's standard library only, with the project's
RESP client (:mod:`kvstack_node.resp`).

Environment: KV_HOST, KV_PORT, LMCACHE_RESP_PASSWORD (from LMCache's own secrets file),
LMCACHE_SERVICE (default lmcache.service), GRACE_S (default 60), DRY_RUN (print only).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from kvstack_node.resp import RespClient, RespError


def service_uptime_s(service: str) -> float | None:
    """Seconds the unit has been active, or None when it is not active."""
    out = subprocess.run(
        ["systemctl", "show", "-p", "ActiveState", "-p", "ActiveEnterTimestampMonotonic", service],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    if props.get("ActiveState") != "active":
        return None
    return time.monotonic() - int(props.get("ActiveEnterTimestampMonotonic", "0")) / 1e6


def main() -> int:
    host, port = os.environ["KV_HOST"], int(os.environ["KV_PORT"])
    service = os.environ.get("LMCACHE_SERVICE", "lmcache.service")
    grace = float(os.environ.get("GRACE_S", "60"))
    uptime = service_uptime_s(service)
    if uptime is None or uptime < grace:
        return 0  # not running, or still connecting
    try:
        client = RespClient(host, port, timeout=5)
    except OSError as exc:
        print(f"KV server {host}:{port} unreachable ({exc}); LMCache recomputes meanwhile", flush=True)
        return 0
    with client:
        password = os.environ.get("LMCACHE_RESP_PASSWORD", "")
        try:
            if password:
                client.command("AUTH", password)
            own_id = str(client.command("CLIENT", "ID"))
            clients = client.command("CLIENT", "LIST").decode(errors="replace").splitlines()
        except (OSError, RespError) as exc:
            # The error code only, never the arguments (the password).
            code = str(exc).split()[0] if isinstance(exc, RespError) and str(exc) else type(exc).__name__
            print(f"KV server {host}:{port} did not answer CLIENT LIST ({code})", file=sys.stderr, flush=True)
            return 1
        me = client.sock.getsockname()[0]
    ours = []
    for line in clients:
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("id") != own_id and fields.get("addr", "").rsplit(":", 1)[0] == me:
            ours.append(fields)
    if ours:
        return 0
    print(
        f"{service} (up {uptime:.0f} s) holds no connection to the KV server {host}:{port} from {me}: "
        "its RESP adapter does not reconnect; restarting it",
        flush=True,
    )
    if os.environ.get("DRY_RUN"):
        return 0
    return subprocess.run(["systemctl", "restart", service], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
