"""kvstack_node.lmcache_exporter (roles/lmcache_exporter) against real parts: a local redis as the
KV-tier member (AUTH + PING, the connection count read from this machine's /proc/net/tcp), a
local HTTP server standing in for LMCache's loopback /metrics, the exporter's own HTTP server; and
the KV janitor's textfile for node_exporter."""

from __future__ import annotations

import os
import re
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from local_redis import PASSWORD, local_redis

from kvstack.metrics import parse_prometheus
from kvstack_node import kv_janitor, lmcache_exporter
from kvstack_node.resp import RespClient

LMCACHE_TEXT = (
    "# HELP lmcache_mp_lookup_requested_tokens_total x\n"
    "# TYPE lmcache_mp_lookup_requested_tokens_total counter\n"
    'lmcache_mp_lookup_requested_tokens_total{cache_salt=""} 512.0\n'
)


def _serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


class _FakeLMCache(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        data = LMCACHE_TEXT.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: object) -> None:
        pass


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def test_proc_net_tcp_addresses_decode():
    v4 = "  sl  local_address rem_address   st\n   0: 0100007F:1F90 1500000A:18EB 01 0\n"
    assert lmcache_exporter.established([v4]) == {("10.0.0.21", 6379): 1}
    v6 = "  sl  local rem st\n   0: " + "0" * 32 + ":0050 0000000000000000FFFF00001500000A:18EB 01 0\n"
    assert lmcache_exporter.established([v6]) == {("10.0.0.21", 6379): 1}  # IPv4-mapped


def test_exporter_relays_lmcache_and_probes_each_member(tmp_path):
    with local_redis(tmp_path) as (host, port), RespClient(host, port, PASSWORD) as held:
        held.command("PING")  # a connection this process keeps open, as LMCache's client does
        lm, lm_url = _serve(_FakeLMCache)
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))  # a port nothing listens on: a member that is down
        down = f"127.0.0.1:{dead.getsockname()[1]}"
        args = lmcache_exporter.argparse.Namespace(
            lmcache_url=f"{lm_url}/metrics", kv_member=[f"{host}:{port}", down], timeout=2.0
        )
        exp, url = _serve(lmcache_exporter.make_handler(args, PASSWORD))
        try:
            text = _get(f"{url}/metrics")
            with pytest.raises(urllib.error.HTTPError) as e:
                _get(f"{url}/api/clear")
            assert e.value.code == 404
        finally:
            for s in (exp, lm):
                s.shutdown()
            dead.close()
    values = parse_prometheus(text).values
    assert values['lmcache_mp_lookup_requested_tokens_total{cache_salt=""}'] == 512
    assert values["kvstack_lmcache_up"] == 1
    assert values[f'kvstack_kv_member_up{{member="{host}:{port}"}}'] == 1
    assert values[f'kvstack_kv_member_up{{member="{down}"}}'] == 0
    assert values[f'kvstack_kv_member_connections{{member="{host}:{port}"}}'] >= 1
    assert values[f'kvstack_kv_member_connections{{member="{down}"}}'] == 0


def test_exporter_says_when_lmcache_does_not_answer():
    args = lmcache_exporter.argparse.Namespace(
        lmcache_url="http://127.0.0.1:9/metrics", kv_member=[], timeout=1.0
    )
    exp, url = _serve(lmcache_exporter.make_handler(args, ""))
    try:
        text = _get(f"{url}/metrics")
    finally:
        exp.shutdown()
    assert re.findall(r"^(\w+) ", text, re.M) == ["kvstack_lmcache_up"]
    assert parse_prometheus(text).values["kvstack_lmcache_up"] == 0


def test_wrong_password_reads_as_member_down(tmp_path):
    with local_redis(tmp_path) as (host, port):
        text = lmcache_exporter.kv_metrics([f"{host}:{port}"], "not-the-password", 2.0)
    assert parse_prometheus(text).values[f'kvstack_kv_member_up{{member="{host}:{port}"}}'] == 0


def test_janitor_writes_its_figures_for_node_exporter(tmp_path):
    """kv_janitor --textfile: used and limit bytes after a pass; janitor_up 0 when the server is gone."""
    out = tmp_path / "kvstack-kv.prom"
    with local_redis(tmp_path, "--maxmemory", "64mb") as (host, port):
        os.environ["KVSTACK_KV_PASSWORD"] = PASSWORD
        try:
            assert kv_janitor.main(["--host", host, "--port", str(port), "--textfile", str(out)]) == 0
        finally:
            del os.environ["KVSTACK_KV_PASSWORD"]
    values = parse_prometheus(out.read_text()).values
    assert values["kvstack_kv_limit_bytes"] == 64 << 20
    assert 0 < values["kvstack_kv_used_bytes"] < 64 << 20
    assert values["kvstack_kv_janitor_up"] == 1
    assert (
        kv_janitor.main(["--host", host, "--port", str(port), "--textfile", str(out), "--timeout", "2"]) == 1
    )
    values = parse_prometheus(out.read_text()).values
    assert values["kvstack_kv_janitor_up"] == 0 and "kvstack_kv_used_bytes" not in values
    assert out.stat().st_mode & 0o777 == 0o644
