"""LMCache's metrics and this node's view of the KV tier, for Prometheus, on the cluster address.

LMCache's multi-process server serves ``/metrics`` on its HTTP port, which stays on loopback: the
same port serves cache-clearing and reconfiguration endpoints without authentication. This
exporter (roles/lmcache_exporter) answers ``GET /metrics`` only, on the node's cluster address,
with:

- LMCache's own metrics as LMCache wrote them (``lmcache_mp_*``), fetched at each scrape;
- ``kvstack_lmcache_up``: 1 when LMCache's endpoint answered, else 0 (its metrics are then absent);
- per KV-tier member (``member="address:port"``, one per kv host): ``kvstack_kv_member_up`` (an
  AUTH + PING from this node answered PONG), ``kvstack_kv_member_probe_seconds`` (how long it took)
  and ``kvstack_kv_member_connections`` (TCP connections from this node to the member in state
  ESTABLISHED, from /proc/net/tcp and tcp6, the probe's own closed before counting): LMCache's
  client keeps its connections open, so 0 while the member answers means this node's LMCache has
  lost its KV tier.

Every other path is 404. The KV password comes from the environment (``KVSTACK_KV_PASSWORD``, set
from a root-only file by the unit), never from the command line.

Usage: ``python -m kvstack_node.lmcache_exporter --listen ADDR:PORT --lmcache-url URL
[--kv-member ADDR:PORT ...]``
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import time
import urllib.request
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from kvstack_node.kv_cluster import split_addr
from kvstack_node.resp import RespClient

#: /proc/net/tcp's state column: ESTABLISHED
TCP_ESTABLISHED = "01"
PROC_TCP = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


def _proc_addr(text: str) -> tuple[str, int]:
    """``0100007F:1F90`` (or its 32-hex-digit IPv6 form) as ("127.0.0.1", 8080): /proc/net/tcp
    writes the address as the kernel's 32-bit words in host (little-endian) byte order."""
    hexaddr, _, hexport = text.partition(":")
    raw = bytes.fromhex(hexaddr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    addr = ipaddress.ip_address(words)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return str(addr), int(hexport, 16)


def established(tables: Sequence[str]) -> dict[tuple[str, int], int]:
    """Remote (address, port) -> number of ESTABLISHED connections, from /proc/net/tcp texts."""
    out: dict[tuple[str, int], int] = {}
    for text in tables:
        for line in text.splitlines()[1:]:
            cols = line.split()
            if len(cols) > 3 and cols[3] == TCP_ESTABLISHED:
                remote = _proc_addr(cols[2])
                out[remote] = out.get(remote, 0) + 1
    return out


def probe(host: str, port: int, password: str, timeout: float) -> tuple[bool, float]:
    """AUTH (with a password) and PING the member; (answered PONG, seconds taken)."""
    t0 = time.monotonic()
    try:
        with RespClient(host, port, password=password or None, timeout=timeout) as c:
            ok = c.command("PING") in ("PONG", b"PONG")
    except (OSError, RuntimeError):
        ok = False
    return ok, time.monotonic() - t0


def kv_metrics(
    members: Sequence[str], password: str, timeout: float, tables: Sequence[Path] = PROC_TCP
) -> str:
    """The ``kvstack_kv_member_*`` families for *members* (``address:port`` each)."""
    if not members:
        return ""
    addrs = {m: split_addr(m) for m in members}
    probes = {m: probe(*addr, password, timeout) for m, addr in addrs.items()}
    conns = established([p.read_text() for p in tables if p.exists()])
    lines = [
        "# HELP kvstack_kv_member_up Whether the KV-tier member answered AUTH and PING from this node.",
        "# TYPE kvstack_kv_member_up gauge",
        *(f'kvstack_kv_member_up{{member="{m}"}} {int(ok)}' for m, (ok, _) in probes.items()),
        "# HELP kvstack_kv_member_probe_seconds Time the probe of the member took.",
        "# TYPE kvstack_kv_member_probe_seconds gauge",
        *(f'kvstack_kv_member_probe_seconds{{member="{m}"}} {s:.6f}' for m, (_, s) in probes.items()),
        "# HELP kvstack_kv_member_connections ESTABLISHED TCP connections from this node to the member.",
        "# TYPE kvstack_kv_member_connections gauge",
        *(f'kvstack_kv_member_connections{{member="{m}"}} {conns.get(addr, 0)}' for m, addr in addrs.items()),
    ]
    return "\n".join(lines) + "\n"


def lmcache_metrics(url: str, timeout: float) -> str:
    """LMCache's /metrics text followed by ``kvstack_lmcache_up`` (0, and no LMCache metrics, when
    its endpoint did not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body, up = resp.read().decode(), 1
    except OSError:
        body, up = "", 0
    if body and not body.endswith("\n"):
        body += "\n"
    return (
        body + "# HELP kvstack_lmcache_up Whether LMCache's metrics endpoint answered.\n"
        "# TYPE kvstack_lmcache_up gauge\n"
        f"kvstack_lmcache_up {up}\n"
    )


def make_handler(args: argparse.Namespace, password: str) -> type[BaseHTTPRequestHandler]:
    """A request handler serving GET /metrics from *args* and nothing else."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "only /metrics is served")
                return
            text = lmcache_metrics(args.lmcache_url, args.timeout)
            text += kv_metrics(args.kv_member, password, args.timeout)
            data = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:  # scrapes every few seconds: no access log
            pass

    return Handler


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kvstack_node.lmcache_exporter", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="address:port to serve /metrics on")
    ap.add_argument("--lmcache-url", required=True, help="LMCache's own /metrics URL (loopback)")
    ap.add_argument("--kv-member", action="append", default=[], help="a KV-tier member, address:port")
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds per fetch and per probe")
    args = ap.parse_args(argv)
    host, port = split_addr(args.listen)
    server = ThreadingHTTPServer((host, port), make_handler(args, os.environ.get("KVSTACK_KV_PASSWORD", "")))
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
