"""The LMCache unit's launcher (kvstack_node.lmcache_launch) on command lines as roles/lmcache
renders them: credentials go into valkey adapters only, in the order LMCache hands them on, never
twice; the KV servers it waits for; GET /config's masking; the wait on a real socket. The node
checks (tests/node/test_serving.py) see the result on a running LMCache."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from kvstack_node import lmcache_launch as launch

VALKEY = {"type": "valkey", "startup_nodes": "10.0.0.21:6666", "num_workers": 4, "request_timeout": 1.0}
RESP = {"type": "resp", "host": "10.0.0.21", "port": 6379}


def argv(*adapters: dict, joined: bool = False) -> list[str]:
    out = ["server", "--host", "127.0.0.1", "--port", "5555"]
    for a in adapters:
        text = json.dumps(a)
        out += [f"--l2-adapter={text}"] if joined else ["--l2-adapter", text]
    return [*out, "--l2-store-policy", "skip_l1"]


@pytest.mark.parametrize("joined", [False, True])
def test_credentials_go_into_valkey_adapters_only(joined):
    before = argv(VALKEY, RESP, joined=joined)
    after = launch.with_credentials(before, "default", "s3cret", swapped=False)
    configs = [json.loads(after[i][len(p) :]) for i, p in launch.adapter_slots(after)]
    assert configs[0] == {**VALKEY, "username": "default", "password": "s3cret"}
    assert configs[1] == RESP
    rest = [a for i, a in enumerate(after) if i not in {i for i, _ in launch.adapter_slots(after)}]
    assert rest == [a for i, a in enumerate(before) if i not in {i for i, _ in launch.adapter_slots(before)}]


def test_swapped_for_an_lmcache_that_passes_them_to_glide_swapped():
    """LMCache 0.5.6 calls ServerCredentials(username, password); glide's is (password, username)."""
    after = launch.with_credentials(argv(VALKEY), "default", "s3cret", swapped=True)
    cfg = json.loads(after[after.index("--l2-adapter") + 1])
    assert (cfg["username"], cfg["password"]) == ("s3cret", "default")


def test_credentials_already_on_the_command_line_are_refused():
    with pytest.raises(SystemExit, match="environment"):
        launch.with_credentials(argv({**VALKEY, "password": "x"}), "default", "s3cret", swapped=False)


def test_no_password_changes_nothing():
    before = argv(VALKEY)
    assert launch.with_credentials(before, "default", "", swapped=False) == before


def test_kv_servers_of_valkey_adapters():
    two = {**VALKEY, "startup_nodes": "10.0.0.21:6666, [fd00::5]:7000"}
    assert launch.kv_servers(argv(two, RESP)) == [("10.0.0.21", 6666), ("fd00::5", 7000)]
    assert launch.kv_servers(argv(RESP)) == []


def test_masked_hides_credentials_at_any_depth():
    adapter = {"type": "valkey", "password": "s3cret", "username": "default", "n": 1}
    cfg = {"adapters": [adapter], "password": ""}
    assert launch.masked(cfg) == {
        "adapters": [{"type": "valkey", "password": "***", "username": "***", "n": 1}],
        "password": "",
    }


def test_wait_reachable_returns_once_the_server_listens():
    """Nothing listens at first; a listener opened 2.5 s later ends the wait, which said so."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    said: list[str] = []
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    timer = threading.Timer(2.5, lambda: (server.bind(("127.0.0.1", port)), server.listen()))
    timer.start()
    try:
        launch.wait_reachable([("127.0.0.1", port)], said.append, every_s=1.0)
    finally:
        timer.join()
        server.close()
    assert said and f"127.0.0.1:{port}" in said[0]


def test_cluster_settings_go_into_cluster_mode_valkey_adapters_only():
    """The lmcache role's kv-cluster.json (members, this node's share) reaches the cluster-mode
    adapter; a standalone valkey adapter and resp keep theirs."""
    cluster = {**VALKEY, "cluster_mode": True}
    settings = {"startup_nodes": "10.0.0.21:6379,10.0.0.22:6379,10.0.0.23:6379", "max_capacity_gb": 1.65}
    after = launch.with_cluster_settings(argv(cluster, VALKEY, RESP), settings)
    configs = [json.loads(after[i][len(p) :]) for i, p in launch.adapter_slots(after)]
    assert configs == [{**cluster, **settings}, VALKEY, RESP]
    assert launch.kv_servers(after)[:3] == [("10.0.0.21", 6379), ("10.0.0.22", 6379), ("10.0.0.23", 6379)]


def test_wait_reachable_needs_one_member_of_a_cluster():
    """One of three members listening ends the wait at once (the client finds the rest itself)."""
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        down = [("127.0.0.1", a.getsockname()[1]), ("127.0.0.1", b.getsockname()[1])]
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        said: list[str] = []
        launch.wait_reachable([*down, server.getsockname()], said.append, every_s=1.0)
    assert said == []
