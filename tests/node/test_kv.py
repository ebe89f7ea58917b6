"""Node checks for the `kv` group: the KV server (Kvrocks, or redis-server in the lab)."""

from __future__ import annotations

import json
import re
import shlex
import time
import uuid

import pytest
from addresses import kv_nodes

from kvstack_node import kv_cluster

testinfra_hosts = ["ansible://kv"]


@pytest.fixture(scope="module")
def kv(hostvars, expected):
    """What the roles were told: server kind, service, port, password, data dir, config file."""
    kind = hostvars.get("kv_server", "kvrocks")
    role = "redis_server" if kind == "redis" else "kvrocks"
    return {
        "kind": kind,
        "role": role,
        "service": expected(role, f"{role}_service") if kind == "redis" else "kvrocks",
        "port": int(hostvars.get("kv_port", 6666)),  # kvstack_defaults' kv_port
        "password": hostvars["kv_password"],
        "data_dir": hostvars.get("kv_data_dir") or expected(role, f"{role}_data_dir"),
        "config": expected(role, f"{role}_config_file"),
        "user": expected(role, f"{role}_user"),
    }


def test_service_active_and_enabled(host, kv):
    svc = host.service(kv["service"])
    assert svc.is_running
    assert svc.is_enabled


def test_listens_only_on_cluster_address(host, kv, cluster_address):
    assert host.socket(f"tcp://{cluster_address}:{kv['port']}").is_listening
    for other in ("0.0.0.0", "127.0.0.1", "::", "::1"):
        assert not host.socket(f"tcp://{other}:{kv['port']}").is_listening, other


def test_unauthenticated_clients_are_refused(resp, kv, cluster_address):
    (reply,) = resp(cluster_address, kv["port"], "", "PING")
    assert reply.startswith("-NOAUTH") or "auth" in reply.lower(), reply
    (reply,) = resp(cluster_address, kv["port"], "", "AUTH|wrong-password")
    assert reply.startswith("-"), reply


def test_key_written_and_read_back(resp, kv, cluster_address, cluster):
    key, value = f"kvstack:nodecheck:{uuid.uuid4().hex}", uuid.uuid4().hex
    if cluster:  # a key of a slot this member serves (another one would be MOVED)
        ranges = cluster[f"{cluster_address}:{kv['port']}"]["my_ranges"]
        key = next(k for i in range(10_000) if _served(ranges, kv_cluster.key_slot(k := f"{key}:{i}")))
    replies = resp(
        cluster_address,
        kv["port"],
        kv["password"],
        "AUTH|@PASSWORD",
        f"SET|{key}|{value}|EX|600",
        f"GET|{key}",
        f"DEL|{key}",
    )
    assert replies[0] == "+OK"
    assert replies[1] == "+OK"
    assert replies[2].endswith(value), replies
    assert replies[3] == ":1"


@pytest.fixture(scope="module")
def cluster(node_tool, kv, inv) -> dict[str, dict]:
    """With several kv hosts (one sharded tier): each member's view of the cluster as this node
    reads it (kvstack_node.redis_cluster status, by address:port); {} for a single kv host."""
    members = kv_nodes(inv)
    if len(members) < 2:
        return {}
    addrs = [f"{h}:{p}" for h, p in members]
    out = json.loads(node_tool("redis_cluster", "status", *addrs, password=kv["password"]))
    return {s["addr"]: s for s in out}


def _served(ranges: list[list[int]], slot: int) -> bool:
    return any(a <= slot <= b for a, b in ranges)


def test_cluster_serves_every_slot_with_an_even_share_here(cluster, kv, cluster_address):
    """A sharded tier: every member in cluster mode knows all the others, reports state ok and all
    16,384 slots served, and this member serves about its even share of them."""
    if not cluster:
        pytest.skip("a single kv host: a standalone server")
    for addr, s in cluster.items():
        assert s["cluster_enabled"] and s["state"] == "ok", (addr, s["state"])
        assert s["slots_assigned"] == kv_cluster.SLOTS and s["known_nodes"] == len(cluster), (addr, s)
    mine = cluster[f"{cluster_address}:{kv['port']}"]["my_slots"]
    assert abs(mine - kv_cluster.SLOTS / len(cluster)) <= 0.05 * kv_cluster.SLOTS, mine


def test_data_dir_owner_mode_and_mount(host, kv, hostvars, expected):
    d = host.file(kv["data_dir"])
    assert d.is_directory
    assert d.user == kv["user"]
    assert d.mode & 0o007 == 0, oct(d.mode)
    mount = host.check_output(f"findmnt -n -o TARGET,FSTYPE -T {shlex.quote(kv['data_dir'])}").split()
    if kv["kind"] == "kvrocks" and hostvars.get("kvrocks_profile") == "dram":
        assert mount[1] == "tmpfs", mount
    elif hostvars.get("nvme_devices"):
        assert mount[0] == expected("nvme", "nvme_mount_point"), mount


def test_config_and_secret_not_world_readable(host, kv):
    conf = host.file(kv["config"])
    assert conf.exists
    assert conf.mode & 0o007 == 0, oct(conf.mode)
    assert conf.contains(kv["password"])  # the secret lives here, so the mode above matters
    # No other file under /etc that is world-readable carries the password.
    leaked = host.run(
        f"grep -rlsF -- {shlex.quote(kv['password'])} /etc | xargs -r stat -c '%a %n' | awk '$1 ~ /[4-7]$/'"
    )
    assert leaked.stdout.strip() == ""


def test_unit_passes_systemd_analyze_verify(host, kv):
    out = host.run(f"systemd-analyze verify --man=no {kv['service']}.service")
    assert out.rc == 0, out.stderr


def test_janitor_runs_where_the_server_refuses_writes_at_its_limit(host, kv, expected, cluster_address):
    """roles/kv_janitor: its timer runs exactly where the server refuses writes at its limit
    instead of evicting (Kvrocks; redis with noeviction, read from its config file); its env
    file, which holds the password, is root's only; its last pass did not fail, and its figures
    (used and limit bytes) are in node_exporter's metrics."""
    if kv["kind"] == "redis":
        conf = host.file(kv["config"]).content_string
        policy = re.search(r"^maxmemory-policy\s+(\S+)", conf, re.M)
        refuses, seen = bool(policy) and policy.group(1) == "noeviction", policy and policy.group(0)
    else:
        refuses, seen = True, "Kvrocks never evicts"
    timer = "kvstack-kv-janitor.timer"
    installed = host.file(f"/etc/systemd/system/{timer}").exists
    active = installed and host.run(f"systemctl is-active {timer}").stdout.strip() == "active"
    enabled = installed and host.run(f"systemctl is-enabled {timer}").stdout.strip() == "enabled"
    assert active == refuses and enabled == refuses, (seen, installed, active, enabled)
    env = host.file("/etc/kvstack/kv-janitor.env")
    if env.exists:
        assert env.user == "root" and env.mode & 0o077 == 0, oct(env.mode)
    if refuses:
        result = host.check_output("systemctl show -p Result --value kvstack-kv-janitor.service")
        assert result == "success", result
        # its figures reach node_exporter's textfile collector (README "Operating") after its
        # first pass (the timer's interval, at most 60 s by default, after it started)
        port = int(expected("node_exporter", "node_exporter_port"))
        pat = re.compile(r"^(kvstack_kv_(?:used|limit)_bytes|kvstack_kv_janitor_up) (\S+)$", re.M)
        deadline = time.monotonic() + 90
        while True:
            figures = dict(
                pat.findall(host.check_output(f"curl -fsS http://{cluster_address}:{port}/metrics"))
            )
            if figures or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert figures.get("kvstack_kv_janitor_up") == "1", figures
        assert float(figures["kvstack_kv_limit_bytes"]) > 0, figures


def test_kv_exporter_reads_the_server_on_the_cluster_address_only(host, hostvars, expected, cluster_address):
    """roles/kv_exporter: Debian's redis exporter runs, listens on the cluster address only, reads
    this host's KV server (redis_up 1) and keeps the password out of its command line."""
    svc = host.service("prometheus-redis-exporter")
    assert svc.is_running and svc.is_enabled
    port = int(expected("kv_exporter", "kv_exporter_port"))
    assert host.socket(f"tcp://{cluster_address}:{port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening
    metrics = host.check_output(f"curl -fsS http://{cluster_address}:{port}/metrics")
    assert re.search(r"^redis_up 1$", metrics, re.M), metrics[:300]
    assert hostvars["kv_password"] not in host.check_output("ps -eo args")
    f = host.file("/etc/default/prometheus-redis-exporter")
    assert (f.user, f.mode) == ("root", 0o600)
