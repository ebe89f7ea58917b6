"""Node checks for the `dynamo` groups (etcd, NATS, the frontend with its router, vLLM workers).

Each check runs on the hosts of its own group and skips where Dynamo is off
(``dynamo_enabled`` false: the lab's default; ``--set dynamo_enabled=true`` after a run of
``site.yml -e dynamo_enabled=true``). An inventory without the groups collects no host here.
"""

from __future__ import annotations

import json
import shlex
import socket

import pytest

#: Where roles/node_tools installs the node tools (kvstack_defaults' kvstack_tools_dir).
TOOLS = "/opt/kvstack/tools"

testinfra_hosts = ["ansible://dynamo"]


@pytest.fixture(scope="module")
def dynamo(hostvars):
    if not hostvars.get("dynamo_enabled", False):
        pytest.skip("dynamo_enabled is false in this inventory (Dynamo is off)")
    return set(hostvars.get("group_names", []))


def _only(groups: set, group: str) -> None:
    if group not in groups:
        pytest.skip(f"not in group {group}")


def _get(host, url: str, body: dict | None = None) -> str:
    cmd = ["curl", "-fsS", "--max-time", "300", url]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    return host.check_output(" ".join(shlex.quote(c) for c in cmd))


def _listens_on_cluster_address_only(host, cluster_address: str, port: int) -> None:
    assert host.socket(f"tcp://{cluster_address}:{port}").is_listening, port
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening, port
    assert not host.socket(f"tcp://127.0.0.1:{port}").is_listening, port


def _service_on_cluster_address(host, cluster_address: str, unit: str, port) -> int:
    """*unit* runs, is enabled and listens on *port* of the cluster address only; the port."""
    svc = host.service(unit)
    assert svc.is_running and svc.is_enabled, unit
    _listens_on_cluster_address_only(host, cluster_address, int(port))
    return int(port)


def test_etcd_healthy_on_cluster_address(host, dynamo, expected, cluster_address):
    _only(dynamo, "dynamo_etcd")
    port = _service_on_cluster_address(host, cluster_address, "etcd", expected("etcd", "etcd_client_port"))
    health = json.loads(_get(host, f"http://{cluster_address}:{port}/health"))
    assert health["health"] == "true"


def _etcdctl(host, url: str, user: str | None, *args: str):
    """etcdctl on the node against *url*, as *user* ("name:password") or anonymous."""
    env = {"ETCDCTL_API": "3", "ETCDCTL_ENDPOINTS": url, **({"ETCDCTL_USER": user} if user else {})}
    words = [f"{k}={v}" for k, v in env.items()] + ["etcdctl", *args]
    return host.run("env " + " ".join(shlex.quote(w) for w in words))


def test_etcd_refuses_clients_without_the_password(host, dynamo, expected, cluster_address, hostvars):
    """Anonymous and wrong-password clients are refused; Dynamo's user reads the records that
    the frontend and workers (logged in with it) keep there."""
    _only(dynamo, "dynamo_etcd")
    if not hostvars.get("etcd_auth_enabled", True):
        pytest.skip("etcd_auth_enabled is false")
    url = f"http://{cluster_address}:{expected('etcd', 'etcd_client_port')}"
    user = hostvars.get("dynamo_etcd_user", "dynamo")
    everything = ("get", "--prefix", "--keys-only", "")
    anonymous = _etcdctl(host, url, None, *everything)
    assert anonymous.rc != 0 and "user name is empty" in anonymous.stderr, anonymous.stderr
    wrong = _etcdctl(host, url, f"{user}:not-the-password", *everything)
    assert wrong.rc != 0 and "authentication failed" in wrong.stderr, wrong.stderr
    ok = _etcdctl(host, url, f"{user}:{hostvars['dynamo_etcd_password']}", *everything)
    assert ok.rc == 0, ok.stderr
    assert ok.stdout.split(), "no Dynamo records in etcd"
    secret = host.file("/etc/kvstack/etcd-root.password")
    assert secret.user == "root" and secret.mode & 0o077 == 0, oct(secret.mode)


def _nats_greeting(address: str, port: int, connect: dict) -> str:
    """NATS protocol from this controller: INFO, CONNECT, PING; the server's next line."""
    with socket.create_connection((address, port), timeout=10) as s:
        f = s.makefile("rwb")
        assert f.readline().startswith(b"INFO "), "no NATS INFO greeting"
        f.write(b"CONNECT " + json.dumps({"verbose": False, **connect}).encode() + b"\r\nPING\r\n")
        f.flush()
        return f.readline().decode().strip()


def test_nats_healthy_on_cluster_address(host, dynamo, expected, cluster_address):
    _only(dynamo, "dynamo_nats")
    _service_on_cluster_address(host, cluster_address, "nats-server", expected("nats", "nats_port"))
    monitor = int(expected("nats", "nats_monitor_port"))
    assert host.socket(f"tcp://127.0.0.1:{monitor}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{monitor}").is_listening
    assert json.loads(_get(host, f"http://127.0.0.1:{monitor}/healthz"))["status"] == "ok"
    conf = host.file("/etc/nats-server.conf")
    assert conf.mode & 0o007 == 0, oct(conf.mode)


def test_nats_refuses_clients_without_the_password(dynamo, expected, cluster_address, hostvars):
    _only(dynamo, "dynamo_nats")
    port = int(expected("nats", "nats_port"))
    assert "Authorization Violation" in _nats_greeting(cluster_address, port, {})
    wrong = {"user": expected("nats", "nats_user"), "pass": "not-the-password"}
    assert "Authorization Violation" in _nats_greeting(cluster_address, port, wrong)


def test_nats_carries_dynamos_clients(host, dynamo, expected):
    """The frontend and every worker hold a NATS connection (the event plane is in use)."""
    _only(dynamo, "dynamo_nats")
    monitor = int(expected("nats", "nats_monitor_port"))
    connz = json.loads(_get(host, f"http://127.0.0.1:{monitor}/connz"))
    workers = host.ansible.get_variables()["groups"].get("dynamo_worker", [])
    assert connz["num_connections"] >= 1 + len(workers), connz


def _router_mode(hostvars) -> str:
    """The router mode the inventory asks for (the role's default follows dynamo_router_mode)."""
    return hostvars.get("dynamo_frontend_router_mode", hostvars.get("dynamo_router_mode", "kv"))


def test_frontend_serves_on_cluster_address(host, dynamo, expected, hostvars, cluster_address):
    _only(dynamo, "dynamo_frontend")
    port = _service_on_cluster_address(
        host, cluster_address, "dynamo-frontend", expected("dynamo_frontend", "dynamo_frontend_port")
    )
    assert json.loads(_get(host, f"http://{cluster_address}:{port}/health"))["status"] == "healthy"
    unit = host.file("/etc/systemd/system/dynamo-frontend.service").content_string
    assert f"--router-mode {_router_mode(hostvars)}" in unit


def test_frontend_lists_the_model_and_completes(host, dynamo, expected, cluster_address):
    """Through the frontend and its router to a worker: the workers' model (their units' served
    name) is the one model registered, and it answers."""
    _only(dynamo, "dynamo_frontend")
    url = f"http://{cluster_address}:{expected('dynamo_frontend', 'dynamo_frontend_port')}"
    models = json.loads(_get(host, f"{url}/v1/models"))
    assert len(models["data"]) == 1, models
    model = models["data"][0]["id"]
    body = {
        "model": model,
        "prompt": "The quick brown fox",
        "max_tokens": 8,
        "temperature": 0,
        "ignore_eos": True,
    }
    out = json.loads(_get(host, f"{url}/v1/completions", body))
    assert out["usage"]["completion_tokens"] == 8


def test_worker_ready_on_cluster_address(host, dynamo, expected, cluster_address):
    _only(dynamo, "dynamo_worker")
    port = _service_on_cluster_address(
        host, cluster_address, "dynamo-worker", expected("dynamo_worker", "dynamo_worker_system_port")
    )
    assert json.loads(_get(host, f"http://{cluster_address}:{port}/health"))["status"] == "ready"


def test_worker_lmcache_follows_the_tier_profile(host, dynamo, hostvars):
    _only(dynamo, "dynamo_worker")
    unit = host.file("/etc/systemd/system/dynamo-worker.service").content_string
    if hostvars.get("tier_profile", "none") == "none":
        assert "LMCacheMPConnector" not in unit
    else:
        assert "LMCacheMPConnector" in unit and "PartOf=lmcache.service" in unit
        assert "kv_load_failure_policy" in unit


def _unit_command(host, unit: str) -> tuple[str, list[str], dict[str, str]]:
    """(python, arguments after ``-m dynamo.X``, Environment= settings) of an installed unit."""
    text = host.file(f"/etc/systemd/system/{unit}").content_string
    env = dict(
        line.removeprefix("Environment=").split("=", 1)
        for line in text.splitlines()
        if line.startswith("Environment=")
    )
    line = next(x for x in text.splitlines() if x.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart=").replace("$$", "$").replace("%%", "%"))
    assert argv[1:2] == ["-m"], argv[:3]
    return argv[0], argv[3:], env


def _parse_on_node(host, python: str, args: list[str], env: dict[str, str], frontend: bool = False):
    """Dynamo's own parser (kvstack_node.dynamo_args, installed by roles/node_tools) on the node."""
    keep = {k: v for k, v in env.items() if k in ("PYTHONPATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    keep["PYTHONPATH"] = ":".join(p for p in (keep.get("PYTHONPATH", ""), TOOLS) if p)
    cmd = ["env", *(f"{k}={v}" for k, v in keep.items()), python, "-m", "kvstack_node.dynamo_args"]
    cmd += ["--frontend"] if frontend else []
    return host.run(" ".join(shlex.quote(c) for c in [*cmd, "--", *args]))


def test_worker_unit_accepted_by_dynamos_own_parser(host, dynamo, hostvars):
    """The installed worker's exact command line goes through dynamo.vllm's parse_args (Dynamo's
    and vLLM's flags, no engine), and the parser refuses what Dynamo's vLLM backend refuses."""
    _only(dynamo, "dynamo_worker")
    python, args, env = _unit_command(host, "dynamo-worker.service")
    out = _parse_on_node(host, python, args, env)
    assert out.rc == 0, out.stderr[-3000:]
    parsed = json.loads(out.stdout)
    lmcache = "--kv-transfer-config" in args
    assert parsed["kv_connector"] == ("LMCacheMPConnector" if lmcache else None)
    assert parsed["enable_prefix_caching"] is True
    assert parsed["served_model_name"] == [hostvars.get("vllm_served_model_name", "model")]
    assert parsed["event_plane"] == hostvars.get("dynamo_event_plane", "nats")
    bad = _parse_on_node(host, python, [*args, "--connector", "lmcache"], env)
    assert bad.rc != 0 and "connector" in bad.stderr


def test_frontend_unit_accepted_by_dynamos_own_parser(host, dynamo, expected, hostvars):
    _only(dynamo, "dynamo_frontend")
    python, args, env = _unit_command(host, "dynamo-frontend.service")
    out = _parse_on_node(host, python, args, env, frontend=True)
    assert out.rc == 0, out.stderr[-3000:]
    parsed = json.loads(out.stdout)
    assert parsed["router_mode"] == _router_mode(hostvars)
    assert parsed["http_port"] == int(expected("dynamo_frontend", "dynamo_frontend_port"))
    bad = _parse_on_node(host, python, [*args, "--no-such-flag"], env, frontend=True)
    assert bad.rc != 0 and "--no-such-flag" in bad.stderr


def test_units_pass_systemd_analyze_verify(host, dynamo):
    units = [
        u
        for g, u in (
            ("dynamo_frontend", "dynamo-frontend.service"),
            ("dynamo_worker", "dynamo-worker.service"),
        )
        if g in dynamo
    ]
    if not units:
        pytest.skip("no Dynamo unit of ours on this node")
    out = host.run("systemd-analyze verify --man=no " + " ".join(units))
    assert out.rc == 0, out.stderr
