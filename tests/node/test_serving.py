"""Node checks for the `serving` group: vLLM units, LMCache per tier profile, cache hits.

The hit checks send a long prompt twice with greedy decoding. Between the two, vLLM's own
prefix cache is emptied (POST /reset_prefix_cache, where the server allows it; else vLLM is
restarted), so the second answer must come from LMCache: vLLM's external prefix-cache hits
grow, LMCache logs retrieved tokens, and the output equals the cold one.
"""

from __future__ import annotations

import json
import random
import re
import shlex
import time
import uuid

import pytest
from addresses import access_address, kv_nodes

#: bytes the KV tier receives between two polls without a chunk stored (INFO requests, pings):
#: far below one chunk (the lab's smallest is 1 MiB)
CHATTER_BYTES = 64 * 1024

testinfra_hosts = ["ansible://serving"]

LMCACHE_PROFILES = ("dram", "kv", "dram+kv")


@pytest.fixture(scope="module")
def serving(hostvars, expected, cluster_address):
    profile = hostvars.get("tier_profile", "none")
    instances = expected("vllm", "vllm_instances")
    return {
        "profile": profile,
        "instances": instances,
        "url": f"http://{cluster_address}:{instances[0]['port']}",
        "model": expected("vllm", "vllm_served_model_name"),
        "model_path": expected("vllm", "vllm_model_path"),
        "api_key": hostvars.get("vllm_api_key", ""),
        "evict": hostvars.get("check_evict", "reset"),
    }


def _curl(host, serving, path: str, body: dict | None = None, method: str | None = None) -> str:
    cmd = ["curl", "-fsS", "--max-time", "300"]
    if serving["api_key"]:
        cmd += ["-H", f"Authorization: Bearer {serving['api_key']}"]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    if method:
        cmd += ["-X", method]
    return host.check_output(" ".join(shlex.quote(c) for c in [*cmd, serving["url"] + path]))


def _metric(host, serving, name: str) -> float:
    """Sum of a vLLM counter over its label sets."""
    text = _curl(host, serving, "/metrics")
    pat = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})?\s+([0-9.eE+-]+)$", re.M)
    return sum(float(v) for v in pat.findall(text))


def _complete(host, serving, prompt: str) -> dict:
    body = {
        "model": serving["model"],
        "prompt": prompt,
        "max_tokens": 16,
        "temperature": 0,
        "ignore_eos": True,
    }
    return json.loads(_curl(host, serving, "/v1/completions", body))


def _empty_vllm_cache(host, serving) -> None:
    """Drop vLLM's own prefix cache: the dev-mode endpoint where enabled, else a restart.

    ``--set check_evict=restart`` forces the restart (LMCache and the KV server stay up).
    """
    if serving["evict"] != "restart":
        reset = host.run(f"curl -fsS -X POST --max-time 30 {serving['url']}/reset_prefix_cache")
        if reset.rc == 0:
            return
    for inst in serving["instances"]:
        host.run_expect([0], f"systemctl restart vllm@{inst['name']}")
    deadline = time.monotonic() + 600
    while host.run(f"curl -fsS --max-time 5 {serving['url']}/health").rc != 0:
        assert time.monotonic() < deadline, "vLLM did not come back after a restart"
        time.sleep(3)


def long_prompt(tokens_hint: int = 2200) -> str:
    """A fresh prompt of about *tokens_hint* tokens that no cache has seen."""
    rng = random.Random(uuid.uuid4().int)
    words = [
        "".join(rng.choices("bcdfghjklmnprstvwz", k=2)) + rng.choice("aeiou") for _ in range(tokens_hint)
    ]
    return " ".join(words)


def test_vllm_units_active_and_enabled(host, serving):
    for inst in serving["instances"]:
        svc = host.service(f"vllm@{inst['name']}")
        assert svc.is_running, inst["name"]
        assert svc.is_enabled, inst["name"]


def test_lmcache_unit_follows_the_tier_profile(host, serving):
    svc = host.service("lmcache")
    if serving["profile"] == "none":
        assert not svc.is_running
        assert not svc.is_enabled
    else:
        assert svc.is_running
        assert svc.is_enabled


def test_lmcache_never_started_before_its_virtualenv(host):
    """On a node's first run the LMCache role installs its unit before roles/vllm installs the
    virtualenv with LMCache in it; the unit must wait for vLLM's units to start it, not be
    started and fail (203/EXEC) every few seconds until the install is done."""
    journal = host.check_output("journalctl -b -u lmcache.service --no-pager -o cat")
    assert "status=203/EXEC" not in journal, [ln for ln in journal.splitlines() if "203/EXEC" in ln][:3]


def test_lmcache_holds_kv_server_connections(host, serving, hostvars, inv, resp, cluster_address):
    """In the KV profiles the KV server holds LMCache's connections from this node (the valkey
    client: one per worker, authenticated with the password the launcher added). The watchdog
    that restores them is scheduled with the resp client only (it does not reconnect)."""
    if serving["profile"] not in ("kv", "dram+kv"):
        pytest.skip(f"tier profile {serving['profile']} has no KV tier")
    client = hostvars.get("lmcache_kv_client", "valkey")
    timer = host.service("lmcache-kv-watchdog.timer")
    watchdog = client == "resp" and hostvars.get("lmcache_kv_watchdog_enabled", True)
    assert timer.is_running == bool(watchdog), client
    for kv_host, kv_port in kv_nodes(inv):  # each member of a sharded tier
        text = "\n".join(
            resp(kv_host, kv_port, hostvars["kv_password"], "AUTH|@PASSWORD", "CLIENT|ID", "CLIENT|LIST")
        )
        own = re.search(r"^:(\d+)$", text, re.M)
        assert own, text[:300]
        clients = re.findall(r"id=(\d+) addr=([0-9a-f.:]+):\d+ ", text)
        ours = [cid for cid, addr in clients if addr == cluster_address and cid != own.group(1)]
        assert ours, f"no client of {kv_host}:{kv_port} from {cluster_address}: {clients}"
        if client == "valkey":
            assert len(ours) >= int(hostvars.get("lmcache_kv_workers", 4)), (kv_host, clients)


def test_lmcache_keeps_the_kv_password_off_its_command_line_and_config(host, serving, hostvars):
    """The KV server's password is in no process's command line, not in the (world-readable) unit
    and not in LMCache's GET /config; only in the 0640 environment file."""
    if serving["profile"] not in ("kv", "dram+kv"):
        pytest.skip(f"tier profile {serving['profile']} has no KV tier")
    password = hostvars["kv_password"]
    env = host.file("/etc/lmcache/lmcache.env")
    assert env.mode == 0o640 and env.user == "root"
    assert password in host.check_output("cat /etc/lmcache/lmcache.env")
    assert password not in host.file("/etc/systemd/system/lmcache.service").content_string
    cmdlines = host.check_output("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '")
    assert "-m kvstack_node.lmcache_launch server" in cmdlines or hostvars.get("lmcache_kv_client") == "resp"
    assert password not in cmdlines
    port = str(hostvars.get("lmcache_http_port", 8080))
    config = host.check_output("curl -sf http://127.0.0.1:%s/config", port)
    assert '"l2_adapter_config"' in config and password not in config


def test_health_and_model_listed(host, serving):
    assert host.run(f"curl -fsS -o /dev/null -w '%{{http_code}}' {serving['url']}/health").stdout == "200"
    models = json.loads(_curl(host, serving, "/v1/models"))
    assert serving["model"] in [m["id"] for m in models["data"]]


def test_completion_returns_text(host, serving):
    out = _complete(host, serving, "The quick brown fox")
    assert out["usage"]["completion_tokens"] == 16
    assert out["choices"][0]["text"].strip()


def test_api_listens_on_cluster_address_only(host, serving, cluster_address):
    for inst in serving["instances"]:
        assert host.socket(f"tcp://{cluster_address}:{inst['port']}").is_listening
        assert not host.socket(f"tcp://0.0.0.0:{inst['port']}").is_listening


def test_repeated_long_prompt_is_served_from_lmcache(host, serving, hostvars, expected, resp, inv):
    if serving["profile"] not in LMCACHE_PROFILES:
        pytest.skip(f"tier profile {serving['profile']} has no LMCache tier")
    prompt = long_prompt()
    since = host.check_output("date +%s")
    kv_before = _kv_bytes_in(resp, hostvars, inv) if serving["profile"] != "dram" else None
    cold = _complete(host, serving, prompt)
    assert cold["usage"]["prompt_tokens"] > 1024
    if kv_before is not None:
        # The kv profiles store each full chunk in the KV server: it receives at least a chunk's
        # bytes (counted, not its key count: a full KV server evicts as it stores)
        assert _kv_bytes_in(resp, hostvars, inv) - kv_before > 256 * 1024
    _empty_vllm_cache(host, serving)
    # Read after the eviction: a restarted vLLM counts from zero.
    hits_before = _metric(host, serving, "vllm:external_prefix_cache_hits_total")
    hit = _complete(host, serving, prompt)
    hits = _metric(host, serving, "vllm:external_prefix_cache_hits_total") - hits_before
    chunk = int(expected("lmcache", "lmcache_chunk_size"))
    assert hits >= (cold["usage"]["prompt_tokens"] // chunk) * chunk - chunk, hits
    assert hit["choices"][0]["text"] == cold["choices"][0]["text"]
    log = host.check_output(f"journalctl -u lmcache --since @{since} --no-pager -o cat")
    retrieved = [int(n) for n in re.findall(r"Retrieved (\d+) tokens", log)]
    assert retrieved and max(retrieved) >= chunk, log[-2000:]


def test_prefix_computed_on_another_node_is_a_hit_here(host, serving, hostvars, expected, resp, inv):
    """The shared KV tier: a long prompt computed by another serving node's vLLM is served here
    from the KV server (this node's vLLM and LMCache DRAM have never seen it)."""
    if serving["profile"] not in ("kv", "dram+kv"):
        pytest.skip(f"tier profile {serving['profile']} has no KV tier")
    me = hostvars.get("inventory_hostname")
    others = {n: h for n, h in inv.hosts("serving").items() if n != me}
    if not others:
        pytest.skip("a single serving node: no other node to share with")
    name, other = next(iter(others.items()))
    port = (other.get("vllm_instances") or serving["instances"])[0]["port"]
    elsewhere = {**serving, "url": f"http://{access_address(other)}:{port}"}
    prompt = long_prompt()
    kv_before = _kv_bytes_in(resp, hostvars, inv)
    cold = _complete(host, elsewhere, prompt)
    # The other node's LMCache stores chunks asynchronously: wait until the KV server's input
    # stops growing by chunks. Not until it stops growing at all: every INFO asked here, and the
    # clients' own pings, add some bytes each time (waiting for no change at all ran into the
    # 60 s deadline on every run); a chunk is far larger than this margin.
    seen, deadline = -1, time.monotonic() + 60
    while time.monotonic() < deadline:
        grown = _kv_bytes_in(resp, hostvars, inv) - kv_before
        if grown > 256 * 1024 and 0 <= grown - seen < CHATTER_BYTES:
            break
        seen = grown
        time.sleep(2)
    assert seen > 256 * 1024, f"{name} stored nothing in the KV server"
    hits_before = _metric(host, serving, "vllm:external_prefix_cache_hits_total")
    hit = _complete(host, serving, prompt)
    hits = _metric(host, serving, "vllm:external_prefix_cache_hits_total") - hits_before
    chunk = int(expected("lmcache", "lmcache_chunk_size"))
    assert hits >= (cold["usage"]["prompt_tokens"] // chunk) * chunk - chunk, (name, hits)
    assert hit["choices"][0]["text"] == cold["choices"][0]["text"]


def _kv_bytes_in(resp, hostvars, inv) -> int:
    """Bytes the KV tier has received (INFO stats, Redis and Kvrocks alike; summed over the members
    of a sharded tier), asked from this node (the real client) over RESP."""
    total = 0
    for kv_host, kv_port in kv_nodes(inv):
        replies = resp(kv_host, kv_port, hostvars["kv_password"], "AUTH|@PASSWORD", "INFO|stats")
        assert replies[0] == "+OK", replies
        found = re.search(r"total_net_input_bytes:(\d+)", replies[1])
        assert found, replies[1][:500]
        total += int(found.group(1))
    return total


def test_units_pass_systemd_analyze_verify(host, serving):
    units = [f"vllm@{inst['name']}.service" for inst in serving["instances"]]
    if serving["profile"] != "none":
        units.append("lmcache.service")
    out = host.run("systemd-analyze verify --man=no " + " ".join(units))
    assert out.rc == 0, out.stderr
    assert "kvstack" not in out.stderr and "vllm" not in out.stderr and "lmcache" not in out.stderr, (
        out.stderr
    )


def test_lmcache_exporter_serves_metrics_only_on_cluster_address(
    host, serving, expected, inv, cluster_address
):
    """roles/lmcache_exporter: LMCache's metrics relayed on the cluster address (LMCache's own
    port stays on loopback), nothing but /metrics, and every KV-tier member reached from here
    with this node's LMCache connected to it."""
    if serving["profile"] == "none":
        pytest.skip("no LMCache in tier profile none")
    port = int(expected("lmcache_exporter", "lmcache_exporter_port"))
    svc = host.service("kvstack-lmcache-exporter")
    assert svc.is_running and svc.is_enabled
    assert host.socket(f"tcp://{cluster_address}:{port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening
    url = f"http://{cluster_address}:{port}"
    text = host.check_output(f"curl -fsS {url}/metrics")
    assert re.search(r"^kvstack_lmcache_up 1$", text, re.M), text[-300:]
    assert "lmcache_mp_l1_usage_ratio" in text  # LMCache's own (lookup counters appear after a lookup)
    assert host.run(f"curl -fsS -o /dev/null {url}/api/clear").rc != 0  # 404: only /metrics
    if serving["profile"] in ("kv", "dram+kv"):
        members = [f"{h}:{p}" for h, p in kv_nodes(inv)]
        up = dict(re.findall(r'^kvstack_kv_member_up\{member="([^"]+)"\} (\d+)$', text, re.M))
        conns = dict(re.findall(r'^kvstack_kv_member_connections\{member="([^"]+)"\} (\d+)$', text, re.M))
        assert up == dict.fromkeys(members, "1"), up
        assert all(int(conns[m]) > 0 for m in members), conns
