"""roles/firewall on the lab: the KV server's port answers the cluster network and nothing else.

"Outside" is a real source address outside cluster_network_cidr (10.99.0.0/24, unused): the
host and a node each add one for the test and connect from it. The firewall's own counter of
refused packets shows that its rule, not routing, stopped them; SSH from the same outside
address still connects, so the path itself works.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import socket
import subprocess

import pytest

from kvstack import inventory

OUTSIDE_HOST, OUTSIDE_NODE = "10.99.0.1", "10.99.0.5"
NODE = "lab-serve1"


@pytest.fixture(scope="module")
def kv(up_lab, testinfra_backend):
    inv = inventory.load(inventory.LAB_INVENTORY)
    name, hostvars = next(iter(inv.hosts("kv").items()))
    table = hostvars.get("firewall_table", "kvstack")
    return testinfra_backend(name), hostvars["ansible_host"], int(hostvars["kv_port"]), table


def _refused(kv_host, table: str) -> int:
    out = json.loads(kv_host.check_output(f"nft -j list counter inet {table} refused_outside"))
    return next(item["counter"]["packets"] for item in out["nftables"] if "counter" in item)


def _connect(addr: str, port: int, source: str, timeout: float = 3.0) -> str:
    """'connected', 'refused' or 'timeout' for a TCP connect from source."""
    with socket.socket() as s:
        s.settimeout(timeout)
        s.bind((source, 0))
        try:
            s.connect((addr, port))
        except TimeoutError:
            return "timeout"
        except ConnectionRefusedError:
            return "refused"
        return "connected"


@contextlib.contextmanager
def _host_address(cidr: str, dev: str):
    subprocess.run(["ip", "addr", "add", cidr, "dev", dev], check=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "addr", "del", cidr, "dev", dev], check=False)


def test_firewall_unit_active_with_cluster_ports(kv):
    kv_host, _, port, table = kv
    assert kv_host.service("kvstack-firewall").is_enabled
    assert kv_host.service("kvstack-firewall").is_running
    listed = json.loads(kv_host.check_output(f"nft -j list set inet {table} cluster_ports"))
    elems = next(item["set"]["elem"] for item in listed["nftables"] if "set" in item)
    assert port in elems


def test_kv_port_from_host_inside_and_outside(kv, up_lab):
    kv_host, addr, port, table = kv
    # Inside: the host's own cluster address reaches the server (which then asks for AUTH).
    assert _connect(addr, port, up_lab.gateway) == "connected"
    before = _refused(kv_host, table)
    with _host_address(f"{OUTSIDE_HOST}/32", up_lab.bridge):
        assert _connect(addr, port, OUTSIDE_HOST) == "timeout"
        # Same outside source, SSH port: connects, so routing is not what stopped the KV port.
        assert _connect(addr, 22, OUTSIDE_HOST) == "connected"
    assert _refused(kv_host, table) > before


NODE_CONNECT = r"""
import socket, sys
s = socket.socket(); s.settimeout(3)
if sys.argv[3] != "-":
    s.bind((sys.argv[3], 0))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.sendall(b"*1\r\n$4\r\nPING\r\n")
    print(s.recv(200).decode().strip())
except TimeoutError:
    print("timeout")
"""


def test_kv_port_from_a_node_inside_and_outside(kv, testinfra_backend):
    kv_host, addr, port, table = kv
    node = testinfra_backend(NODE)
    inside = node.check_output(f"python3 -c {shlex.quote(NODE_CONNECT)} {addr} {port} -")
    assert inside.startswith("-NOAUTH"), inside  # reachable, and it wants the password
    before = _refused(kv_host, table)
    node.check_output(f"ip addr add {OUTSIDE_NODE}/32 dev host0")
    try:
        outside = node.check_output(f"python3 -c {shlex.quote(NODE_CONNECT)} {addr} {port} {OUTSIDE_NODE}")
    finally:
        node.run(f"ip addr del {OUTSIDE_NODE}/32 dev host0")
    assert outside == "timeout"
    assert _refused(kv_host, table) > before
