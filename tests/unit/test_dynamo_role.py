"""The Dynamo roles' command lines, rendered through real Ansible and checked with Dynamo's parser.

The worker's and the frontend's argument lists come from the roles' own ``tasks/args.yml`` entry
points (``ansible-playbook`` against localhost, the json callback), so these are the exact argv the
units run. Dynamo's own parsers check them on the nodes (the roles before every (re)start, and
``tests/node/test_dynamo.py`` on the installed units): Dynamo is not installed on the controller.
The input checks (``tasks/validate.yml``) refuse bad values naming the variable; the inventory's
control-plane addresses render to what Dynamo's environment expects.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvstack import REPO

PLAYBOOK = REPO / "tests" / "unit" / "playbooks" / "role_entry_point.yml"

# The lab's inventory values the roles read (inventory/lab/group_vars).
LAB_VARS = {
    "cluster_address": "10.77.0.11",
    "dynamo_enabled": True,
    "dynamo_etcd_endpoints": "http://10.77.0.21:2379",
    "dynamo_nats_url": "nats://10.77.0.21:4222",
    "dynamo_nats_password": "test-only-nats-password",
    "dynamo_etcd_password": "test-only-etcd-password",
    "vllm_platform": "cpu",
    "vllm_model_path": "/srv/models/tiny-llama",
    "vllm_served_model_name": "tiny",
    "vllm_dtype": "float32",
    "vllm_enforce_eager": True,
    "vllm_max_model_len": 8192,
    "vllm_num_kv_blocks": 128,
    "tier_profile": "dram+kv",
}


def run_role(
    tmp_path: Path, role: str, tasks_from: str, show: str | None = None, **variables
) -> tuple[int, dict]:
    """ansible-playbook on one task file of *role* for host `node` (in the groups serving and
    dynamo_*); the json callback's document."""
    inventory = tmp_path / "inventory.json"
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    groups = {
        g: {"hosts": {"node": {}}}
        for g in ("serving", "dynamo_etcd", "dynamo_nats", "dynamo_frontend", "dynamo_worker")
    }
    inventory.write_text(json.dumps({"all": {"hosts": {"node": host}, "children": groups}}))
    extra = {"test_role": role, "test_tasks_from": tasks_from, **variables}
    if show:
        extra["test_show_var"] = show
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_NOCOLOR": "1",
    }
    cmd = [str(Path(sys.executable).with_name("ansible-playbook")), str(PLAYBOOK), "-i", str(inventory)]
    proc = subprocess.run(
        [*cmd, "-e", json.dumps(extra)], cwd=REPO, env=env, text=True, capture_output=True, timeout=120
    )
    assert proc.stdout.lstrip().startswith("{"), proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.returncode, json.loads(proc.stdout)


def results(document: dict) -> list[dict]:
    return [
        task["hosts"]["node"]
        for play in document["plays"]
        for task in play["tasks"]
        if "node" in task["hosts"]
    ]


def shown(document: dict, name: str):
    return next(r[name] for r in results(document) if name in r)


def failure(document: dict) -> str:
    """The messages of the failed tasks, and of each failed item of a looping check."""
    failed = [r for r in results(document) if r.get("failed")]
    items = [i for r in failed for i in r.get("results", []) if i.get("failed")]
    return " ".join(str(r.get("msg", "")) for r in failed + items)


def rendered(tmp_path: Path, role: str, tasks_from: str, name: str, **variables):
    """The fact *name* that *role*'s *tasks_from* sets with *variables* (the run must succeed)."""
    rc, doc = run_role(tmp_path, role, tasks_from, name, **variables)
    assert rc == 0, failure(doc)
    return shown(doc, name)


def flag(argv: list[str], name: str) -> str:
    """The value after flag *name* (it must be there once)."""
    assert argv.count(name) == 1, (name, argv)
    return argv[argv.index(name) + 1]


@pytest.fixture(scope="module")
def worker_argv(tmp_path_factory) -> list[str]:
    return rendered(
        tmp_path_factory.mktemp("w"), "dynamo_worker", "args.yml", "dynamo_worker_args", **LAB_VARS
    )


def test_worker_argv_follows_the_inventory(worker_argv):
    assert flag(worker_argv, "--model") == "/srv/models/tiny-llama"
    assert flag(worker_argv, "--served-model-name") == "tiny"
    assert flag(worker_argv, "--dtype") == "float32"
    assert flag(worker_argv, "--num-gpu-blocks-override") == "128"
    assert "--enforce-eager" in worker_argv and "--enable-prefix-caching" in worker_argv
    assert "--gpu-memory-utilization" not in worker_argv  # cpu
    assert flag(worker_argv, "--discovery-backend") == "etcd"
    assert flag(worker_argv, "--request-plane") == "tcp"
    assert flag(worker_argv, "--event-plane") == "nats"
    assert "--connector" not in worker_argv  # refused by Dynamo's vLLM backend


def test_worker_attaches_lmcache_through_vllms_kv_transfer_config(worker_argv):
    kvt = json.loads(flag(worker_argv, "--kv-transfer-config"))
    assert kvt["kv_connector"] == "LMCacheMPConnector" and kvt["kv_role"] == "kv_both"
    extra = kvt["kv_connector_extra_config"]
    assert extra["lmcache.mp.host"] == "tcp://127.0.0.1" and int(extra["lmcache.mp.port"]) == 5555


def test_worker_publishes_kv_events_on_loopback_only(worker_argv):
    events = json.loads(flag(worker_argv, "--kv-events-config"))
    assert events["enable_kv_cache_events"] is True and events["publisher"] == "zmq"
    assert events["endpoint"] == "tcp://127.0.0.1:20557"


def test_worker_without_lmcache_or_kv_events(tmp_path):
    variables = {**LAB_VARS, "tier_profile": "none", "dynamo_kv_events": False}
    argv = rendered(tmp_path, "dynamo_worker", "args.yml", "dynamo_worker_args", **variables)
    assert "--kv-transfer-config" not in argv and "--kv-events-config" not in argv


@pytest.fixture(scope="module")
def frontend_argv(tmp_path_factory) -> list[str]:
    variables = {**LAB_VARS, "cluster_address": "10.77.0.21"}
    return rendered(
        tmp_path_factory.mktemp("f"), "dynamo_frontend", "args.yml", "dynamo_frontend_args", **variables
    )


def test_frontend_argv_binds_the_cluster_address_with_the_kv_router(frontend_argv):
    assert flag(frontend_argv, "--http-host") == "10.77.0.21"
    assert flag(frontend_argv, "--http-port") == "8300"
    assert flag(frontend_argv, "--router-mode") == "kv"
    assert "--router-kv-events" in frontend_argv
    assert flag(frontend_argv, "--discovery-backend") == "etcd"
    assert flag(frontend_argv, "--event-plane") == "nats"


@pytest.mark.parametrize(
    ("role", "variables", "named"),
    [
        ("dynamo_worker", {"dynamo_worker_host": "0.0.0.0"}, "dynamo_worker_host"),
        ("dynamo_worker", {"dynamo_worker_system_port": 8182}, "dynamo_worker_system_port"),
        ("dynamo_worker", {"dynamo_etcd_endpoints": ""}, "dynamo_worker_etcd_endpoints"),
        ("dynamo_frontend", {"dynamo_router_mode": "closest"}, "dynamo_frontend_router_mode"),
        ("dynamo_frontend", {"dynamo_frontend_host": "0.0.0.0"}, "dynamo_frontend_host"),
        ("etcd", {"etcd_listen_address": "10.77.0.99"}, "etcd_listen_address"),
        ("etcd", {"dynamo_etcd_password": "too-short"}, "dynamo_etcd_password"),
        ("etcd", {"dynamo_etcd_password": "twelve or more but spaced"}, "dynamo_etcd_password"),
        ("etcd", {"dynamo_etcd_user": "root"}, "etcd_auth_user"),
        ("nats", {"dynamo_nats_password": ""}, "dynamo_nats_password"),
        ("nats", {"nats_listen_address": "0.0.0.0"}, "nats_listen_address"),
        ("nats", {"nats_max_file_store": "lots"}, "nats_max_file_store"),
        ("dynamo_worker", {"dynamo_nats_url": ""}, "dynamo_nats_url"),
        ("dynamo_frontend", {"dynamo_nats_password": ""}, "dynamo_nats_password"),
        ("dynamo_frontend", {"dynamo_event_plane": "kafka"}, "dynamo_event_plane"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_values_refused_naming_the_variable(tmp_path, role, variables, named):
    base = {**LAB_VARS, "ansible_host": "10.77.0.11", "ansible_facts": {"memtotal_mb": 24000}}
    rc, doc = run_role(tmp_path, role, "validate.yml", **{**base, **variables})
    assert rc != 0
    assert named in failure(doc), failure(doc)


def test_off_by_default_validates_nothing(tmp_path):
    """With dynamo_enabled unset the checks pass whatever the Dynamo values (site.yml as before)."""
    variables = {"cluster_address": "10.77.0.11", "ansible_host": "10.77.0.11", "dynamo_router_mode": "kv"}
    for role in ("etcd", "nats", "dynamo_frontend", "dynamo_worker"):
        rc, doc = run_role(tmp_path, role, "validate.yml", **variables, dynamo_worker_host="0.0.0.0")
        assert rc == 0, (role, failure(doc))


def test_etcd_cluster_lists_the_group_at_its_addresses(tmp_path):
    variables = {**LAB_VARS, "cluster_address": "10.77.0.11", "ansible_host": "10.77.0.11"}
    endpoint = rendered(tmp_path, "etcd", "endpoints.yml", "etcd_endpoint", **variables)
    assert endpoint["client_url"] == "http://10.77.0.11:2379"
    assert endpoint["initial_cluster"].strip() == "node=http://10.77.0.11:2380"


def _inventory_value(inventory: str, host: str, expr: str) -> str:
    """*expr* rendered for *host* by Ansible from the repository's *inventory* and the shared
    defaults every play loads (roles/kvstack_defaults), no connection, no facts."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"}
    cmd = [
        str(Path(sys.executable).with_name("ansible-playbook")),
        str(REPO / "tests" / "unit" / "playbooks" / "shared_value.yml"),
        "-i",
        str(REPO / "inventory" / inventory),
        "-l",
        host,
        "-e",
        json.dumps({"kvstack_value_expr": "{{ " + expr + " }}"}),
        "-e",
        "ansible_python_interpreter=" + sys.executable,
        "--vault-password-file",
        str(REPO / "inventory" / "baremetal.example" / ".vault-pass.example"),
    ]
    env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.posix.json"
    proc = subprocess.run(cmd, cwd=REPO, env=env, text=True, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    (task,) = [t for t in doc["plays"][0]["tasks"] if t["task"]["name"] == "The value"]
    return task["hosts"][host]["msg"]


def test_lab_inventory_renders_the_control_plane_addresses():
    """ETCD_ENDPOINTS and NATS_SERVER as Dynamo parses them (a regex back-reference once came out
    as a literal \\1 here)."""
    assert _inventory_value("lab", "lab-serve1", "dynamo_etcd_endpoints") == "http://10.77.0.21:2379"
    assert _inventory_value("lab", "lab-serve1", "dynamo_nats_url") == "nats://10.77.0.21:4222"


def test_baremetal_example_without_dynamo_hosts_renders_empty_addresses():
    """No host in dynamo_etcd / dynamo_nats: empty, which the roles refuse naming the variable."""
    value = _inventory_value(
        "baremetal.example", "gpu-node01", "dynamo_etcd_endpoints ~ '|' ~ dynamo_nats_url"
    )
    assert value == "|"


def test_baremetal_example_keeps_dynamos_passwords_in_the_vault():
    """secrets.yml names them; the encrypted vault.yml holds them (the example's vault password)."""
    value = _inventory_value(
        "baremetal.example", "gpu-node01", "dynamo_nats_password ~ '|' ~ dynamo_etcd_password"
    )
    assert value == "example-nats-password-change-me-41c8|example-etcd-password-change-me-93b5"
