"""kvrocks.conf and redis.conf as the roles render them, through real Ansible, checked for real.

Every Kvrocks profile is rendered by the kvrocks role's own ``render.yml`` entry point (its input
checks, then the template) with ``ansible-playbook`` against localhost, and the file is parsed:
only keys of upstream's default kvrocks.conf (``tests/data/kvrocks.reference.conf``), each once,
values of the reference's type and within upstream's ranges. There is no Kvrocks binary here (see
README), so a Kvrocks config cannot be started; the Redis one is: redis.conf rendered by the
redis_server role runs a real redis-server that refuses unauthenticated clients and persists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kvstack import REPO

PLAYBOOK = REPO / "tests" / "unit" / "playbooks" / "role_entry_point.yml"
REFERENCE = REPO / "tests" / "data" / "kvrocks.reference.conf"
SHARED_REFERENCE = REPO.parent / "shared" / "reference" / "kvrocks.conf"
PROFILES = ("upstream", "nvme_large_values", "dram")
PASSWORD = "unit-test-pass+/="

# Keys upstream's kvrocks.conf documents as commented-out directives (valid, no default value).
COMMENTED_DIRECTIVES = {
    "requirepass",
    "masterauth",
    "pidfile",
    "unixsocket",
    "unixsocketperm",
    "proto-max-bulk-len",
    "slaveof",
    "replica-announce-ip",
    "replica-announce-port",
    "resp3-enabled",
    "profiling-sample-commands",
    "compact-cron",
    "rename-command",
    "rocksdb.avoid_unnecessary_blocking_io",
    "rocksdb.write_options.write_batch_max_bytes",
}
# Enumerations, as the reference's comments list them.
ENUMS = {
    "rocksdb.compression": {"no", "snappy", "lz4", "zstd", "zlib"},
    "rocksdb.wal_compression": {"no", "zstd"},
    "rocksdb.block_cache_type": {"lru", "hcc"},
    "log-level": {"info", "warning", "error", "fatal"},
    "supervised": {"no", "upstart", "systemd", "auto"},
}
# Ranges upstream's src/config/config.cc enforces when it loads the file.
RANGES = {
    "workers": (1, 256),
    "port": (1, 65535),
    "rocksdb.write_buffer_size": (0, 4096),
    "rocksdb.max_write_buffer_number": (0, 256),
    "rocksdb.target_file_size_base": (1, 1024),
    "rocksdb.max_background_jobs": (0, 32),
    "rocksdb.max_subcompactions": (0, 16),
    "rocksdb.compaction_readahead_size": (0, 64 * 2**20),
    "rocksdb.level0_slowdown_writes_trigger": (0, 1024),
    "rocksdb.level0_stop_writes_trigger": (1, 1024),
    "rocksdb.level0_file_num_compaction_trigger": (1, 1024),
    "rocksdb.compression_start_level": (0, 6),
    "rocksdb.blob_garbage_collection_age_cutoff": (0, 100),
    "rocksdb.max_bytes_for_level_multiplier": (1, 100),
    "rocksdb.max_open_files": (-1, 2**31 - 1),
    "rocksdb.min_blob_size": (0, 2**31 - 1),
    "rocksdb.blob_file_size": (0, 2**31 - 1),
}
# Smallest LMCache chunk value the KV tier stores: 256 tokens of the lab's tiny model (4 layers,
# 2 KV heads, head dim 32 at least, K and V, fp16). Real models' chunks are 1-32 MiB.
SMALLEST_CHUNK_BYTES = 256 * 4 * 2 * 32 * 2 * 2


def run_entry_point(
    role: str, extra_vars: dict, tasks_from: str = "render.yml", inventory: str = "localhost,", *args: str
) -> subprocess.CompletedProcess:
    """ansible-playbook on one task file of a role, against localhost (-c local); output in .stdout."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        "ANSIBLE_NOCOLOR": "1",
    }
    variables = {
        "test_role": role,
        "test_tasks_from": tasks_from,
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        **extra_vars,
    }
    cmd = [
        str(Path(sys.executable).with_name("ansible-playbook")),
        str(PLAYBOOK),
        "-i",
        inventory,
        "-e",
        json.dumps(variables),
        *args,
    ]
    return subprocess.run(
        cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60
    )


def parse_conf(text: str) -> list[tuple[str, str]]:
    """(key, value) of every directive line, in order; comments and blank lines skipped."""
    pairs = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.strip().partition(" ")
        pairs.append((key, value.strip()))
    return pairs


def reference() -> dict[str, str]:
    """Active directives of upstream's default kvrocks.conf: key -> default value."""
    return dict(parse_conf(REFERENCE.read_text()))


def render_kvrocks(tmp_path: Path, **extra_vars) -> tuple[subprocess.CompletedProcess, Path]:
    conf = tmp_path / "kvrocks.conf"
    variables = {
        "kv_password": PASSWORD,
        "cluster_address": "10.77.0.21",
        "kvrocks_group": "root",  # the kvrocks group does not exist here
        "kvrocks_config_file": str(conf),
        **extra_vars,
    }
    return run_entry_point("kvrocks", variables), conf


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, dict[str, str]]:
    """Each profile's kvrocks.conf, parsed (also checks that no key appears twice)."""
    out = {}
    for profile in PROFILES:
        proc, conf = render_kvrocks(tmp_path_factory.mktemp(profile), kvrocks_profile=profile)
        assert proc.returncode == 0, proc.stdout[-3000:]
        pairs = parse_conf(conf.read_text())
        keys = [k for k, _ in pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        assert not twice, f"{profile}: keys set twice: {twice}"
        out[profile] = dict(pairs)
    return out


def test_cluster_member_config_uses_reference_keys(tmp_path, rendered):
    """Several kv hosts: cluster-enabled and persist-cluster-nodes-enabled, keys and yes/no values
    of upstream's kvrocks.conf; a single kv host's config has neither (as before the cluster)."""
    proc, conf = render_kvrocks(tmp_path, kvrocks_cluster_enabled=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    pairs, ref = dict(parse_conf(conf.read_text())), reference()
    assert pairs["cluster-enabled"] == "yes" and pairs["persist-cluster-nodes-enabled"] == "yes"
    assert {"cluster-enabled", "persist-cluster-nodes-enabled"} <= set(ref)
    assert ref["cluster-enabled"] in ("yes", "no") and ref["persist-cluster-nodes-enabled"] in ("yes", "no")
    assert all("cluster-enabled" not in conf for conf in rendered.values())  # one kv host


def test_repo_reference_is_upstreams_default_config():
    text = REFERENCE.read_text()
    assert "Upstream Apache Kvrocks default configuration" in text
    assert "rocksdb.enable_blob_files no" in text
    if SHARED_REFERENCE.is_file():
        assert text.splitlines()[3:] == SHARED_REFERENCE.read_text().splitlines()


def test_commented_directives_are_in_the_reference():
    text = REFERENCE.read_text()
    for key in COMMENTED_DIRECTIVES:
        assert re.search(rf"^# {re.escape(key)} ", text, re.M), key


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_uses_only_reference_keys_with_well_formed_values(rendered, profile):
    conf, ref = rendered[profile], reference()
    unknown = set(conf) - set(ref) - COMMENTED_DIRECTIVES
    assert not unknown, f"keys upstream's kvrocks.conf does not have: {sorted(unknown)}"
    # Every RocksDB setting of the reference is set explicitly.
    assert {k for k in ref if k.startswith("rocksdb.")} <= set(conf)
    for key, value in conf.items():
        default = ref.get(key)
        if key in ENUMS:
            assert value in ENUMS[key], f"{key} {value}: not one of {sorted(ENUMS[key])}"
        elif default in ("yes", "no"):
            assert value in ("yes", "no"), f"{key} {value}: not yes/no"
        elif default is not None and re.fullmatch(r"-?\d+", default):
            assert re.fullmatch(r"-?\d+", value), f"{key} {value}: not an integer"
        if key in RANGES:
            low, high = RANGES[key]
            assert low <= int(value) <= high, f"{key} {value}: outside [{low}, {high}]"
    slowdown, stop = (int(conf[f"rocksdb.level0_{t}_writes_trigger"]) for t in ("slowdown", "stop"))
    assert slowdown < stop


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_binds_the_cluster_address_with_a_password(rendered, profile):
    conf = rendered[profile]
    assert conf["bind"] == "10.77.0.21"
    assert "0.0.0.0" not in conf["bind"].split()
    assert conf["requirepass"] == PASSWORD
    assert conf["port"] == "6666"
    assert conf["daemonize"] == "no" and conf["supervised"] == "systemd"
    assert conf["dir"] == "/var/lib/kvrocks"


def test_upstream_profile_is_upstreams_rocksdb_defaults(rendered):
    conf, ref = rendered["upstream"], reference()
    rocks = {k: v for k, v in ref.items() if k.startswith("rocksdb.")}
    assert {k: conf[k] for k in rocks} == rocks


def test_nvme_large_values_profile_separates_chunk_values(rendered):
    conf = rendered["nvme_large_values"]
    assert conf["rocksdb.enable_blob_files"] == "yes"
    assert int(conf["rocksdb.min_blob_size"]) < SMALLEST_CHUNK_BYTES
    assert int(conf["rocksdb.blob_file_size"]) > 16 * 2**20  # several multi-MB chunks per file
    assert conf["rocksdb.compression"] == "no"
    assert int(conf["rocksdb.block_size"]) > int(reference()["rocksdb.block_size"])
    assert int(conf["rocksdb.write_buffer_size"]) > int(reference()["rocksdb.write_buffer_size"])


def test_dram_profile_has_no_wal_and_no_compression(rendered):
    conf = rendered["dram"]
    assert conf["rocksdb.write_options.disable_wal"] == "yes"
    assert conf["rocksdb.compression"] == "no"
    assert conf["rocksdb.enable_blob_files"] == "yes"


def test_overrides_are_merged_over_the_profile(tmp_path):
    proc, conf = render_kvrocks(
        tmp_path,
        kvrocks_profile="nvme_large_values",
        kvrocks_rocksdb_overrides={"block_cache_size": 8192, "write_options.disable_wal": False},
        kv_port=7000,
        kv_data_dir="/srv/nvme/kvrocks",
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    parsed = dict(parse_conf(conf.read_text()))
    assert parsed["rocksdb.block_cache_size"] == "8192"
    assert parsed["rocksdb.write_options.disable_wal"] == "no"
    assert parsed["rocksdb.enable_blob_files"] == "yes"  # the rest of the profile stays
    assert parsed["port"] == "7000" and parsed["dir"] == "/srv/nvme/kvrocks"
    assert conf.stat().st_mode & 0o777 == 0o640


def test_unknown_override_key_is_refused_by_name(tmp_path):
    proc, conf = render_kvrocks(tmp_path, kvrocks_rocksdb_overrides={"compaction_style": "universal"})
    assert proc.returncode != 0
    assert "compaction_style" in proc.stdout and "kvrocks_rocksdb_overrides" in proc.stdout
    assert not conf.exists()


def test_empty_password_fails_naming_the_variable(tmp_path):
    proc, conf = render_kvrocks(tmp_path, kv_password="")
    assert proc.returncode != 0
    assert "kvrocks_requirepass is empty" in proc.stdout and "kv_password" in proc.stdout
    assert not conf.exists()


def test_password_that_would_need_quoting_is_refused(tmp_path):
    proc, conf = render_kvrocks(tmp_path, kv_password="two words")
    assert proc.returncode != 0
    assert "kvrocks_requirepass (kv_password) must not contain whitespace" in proc.stdout
    assert "two words" not in proc.stdout  # the value itself is never printed
    assert not conf.exists()


def test_wildcard_bind_is_refused(tmp_path):
    proc, conf = render_kvrocks(tmp_path, kv_bind_address="0.0.0.0")
    assert proc.returncode != 0
    assert "kvrocks_bind must list the node's own address" in proc.stdout
    assert not conf.exists()


def test_empty_source_checksum_fails_naming_the_variable(tmp_path):
    proc = run_entry_point(
        "kvrocks",
        {"kv_password": PASSWORD, "cluster_address": "10.77.0.21", "kvrocks_source_sha256": ""},
        tasks_from="validate.yml",
    )
    assert proc.returncode != 0
    assert "kvrocks_source_sha256 is empty" in proc.stdout


def test_baremetal_example_inventory_renders_with_its_vault(tmp_path):
    """The example inventory's kv group, vault-encrypted password included, renders a valid config."""
    inv = REPO / "inventory" / "baremetal.example"
    vault = inv / "group_vars" / "all" / "vault.yml"
    assert vault.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")
    conf = tmp_path / "kvrocks.conf"
    proc = run_entry_point(
        "kvrocks",
        {"cluster_address": "10.10.0.11", "kvrocks_group": "root", "kvrocks_config_file": str(conf)},
        "render.yml",
        str(inv),
        "--limit",
        "kv",
        "--vault-password-file",
        str(inv / ".vault-pass.example"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    parsed = dict(parse_conf(conf.read_text()))
    assert parsed["bind"] == "10.10.0.11" and parsed["port"] == "6666"
    assert parsed["requirepass"] and parsed["requirepass"] not in vault.read_text()
    assert parsed["dir"] == "/srv/nvme/kvrocks"
    assert parsed["rocksdb.enable_blob_files"] == "yes"  # kvrocks_profile: nvme_large_values
    assert parsed["max-db-size"] == "2970"  # kv_capacity_gb 3300 less kv_capacity_headroom 0.1


def test_kv_budget_sets_max_db_size_and_a_budget_below_one_gib_is_refused(tmp_path):
    proc, conf = render_kvrocks(tmp_path, kv_capacity_gb=10, kv_capacity_headroom=0.2)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert dict(parse_conf(conf.read_text()))["max-db-size"] == "8"
    conf.unlink()
    proc, conf = render_kvrocks(tmp_path, kv_capacity_gb=0.5)
    assert proc.returncode != 0
    assert "kv_capacity_gb 0.5" in proc.stdout and "raise kv_capacity_gb" in proc.stdout
    assert not conf.exists()


# --- redis_server: the lab's stand-in, started for real -------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render_redis(tmp_path: Path, **extra_vars) -> tuple[subprocess.CompletedProcess, Path]:
    conf = tmp_path / "redis.conf"
    variables = {
        "kv_password": PASSWORD,
        "cluster_address": "10.77.0.21",
        "redis_server_user": "root",
        "redis_server_group": "root",
        "redis_server_config_file": str(conf),
        **extra_vars,
    }
    return run_entry_point("redis_server", variables), conf


def test_redis_conf_binds_the_cluster_address_and_persists(tmp_path):
    proc, conf = render_redis(tmp_path, kv_data_dir="/var/lib/kvstack-kv", redis_server_maxmemory_mb=2048)
    assert proc.returncode == 0, proc.stdout[-3000:]
    pairs = parse_conf(conf.read_text())
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys))
    parsed = dict(pairs)
    assert parsed["bind"] == "10.77.0.21" and parsed["protected-mode"] == "yes"
    assert parsed["requirepass"] == PASSWORD
    assert parsed["dir"] == "/var/lib/kvstack-kv"
    assert parsed["appendonly"] == "yes" and parsed["appendfsync"] == "everysec"
    assert parsed["save"] and parsed["maxmemory"] == "2048mb"
    assert parsed["maxmemory-policy"] == "allkeys-lru"
    assert conf.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize(("var", "value"), [("kv_capacity_gb", "lots"), ("kv_capacity_headroom", 1.5)])
def test_kv_budget_that_is_not_a_size_is_refused_naming_it(var, value):
    """roles/common's checks (every node's preflight) of the budget every KV limit derives from."""
    proc = run_entry_point("common", {var: value, "cluster_address": "10.77.0.21"}, "validate.yml")
    assert proc.returncode != 0
    assert f"{var} must be" in proc.stdout, proc.stdout[-3000:]


def test_redis_maxmemory_comes_from_the_kv_budget(tmp_path):
    proc, conf = render_redis(tmp_path, kv_capacity_gb=2.2, kv_capacity_headroom=0.1)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert dict(parse_conf(conf.read_text()))["maxmemory"] == "2027mb"  # 2.2 x 0.9 x 1024


def test_redis_empty_password_fails_naming_the_variable(tmp_path):
    proc, conf = render_redis(tmp_path, kv_password="")
    assert proc.returncode != 0
    assert "redis_server_requirepass is empty" in proc.stdout and "kv_password" in proc.stdout
    assert not conf.exists()


def test_rendered_redis_conf_runs_a_real_server(tmp_path):
    server_bin = shutil.which("redis-server")
    assert server_bin, "redis-server is missing: run ./bootstrap.sh (it installs Debian's redis-server)"
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    proc, conf = render_redis(
        tmp_path, redis_server_bind="127.0.0.1", redis_server_port=port, redis_server_data_dir=str(data)
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    log = tmp_path / "redis.log"

    def start() -> subprocess.Popen:
        server = subprocess.Popen(
            [server_bin, str(conf), "--pidfile", str(tmp_path / "redis.pid")],
            stdout=log.open("a"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return server
            except OSError:
                assert server.poll() is None, log.read_text()
                time.sleep(0.05)
        server.kill()
        pytest.fail("redis-server did not listen within 5 s:\n" + log.read_text())

    def connect() -> redis.Redis:
        # RESP2 and no retries: a refused or closed connection shows at once.
        return redis.Redis(
            host="127.0.0.1",
            port=port,
            password=PASSWORD,
            protocol=2,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )

    value = os.urandom(2 * 2**20)  # a 2 MiB chunk, like an LMCache KV chunk
    server = start()
    try:
        # An unauthenticated PING, on the wire: refused.
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(200).startswith(b"-NOAUTH")
        client = connect()
        assert client.set("kvstack:chunk", value)
        assert client.get("kvstack:chunk") == value
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.shutdown(save=True)
    finally:
        if server.poll() is None:
            server.terminate()
        server.wait(timeout=5)
    assert (data / "appendonlydir").is_dir() and (data / "dump.rdb").is_file()

    # Persistence: a restarted server has the value back.
    server = start()
    try:
        client = connect()
        assert client.get("kvstack:chunk") == value
        client.shutdown(nosave=True)
    finally:
        if server.poll() is None:
            server.terminate()
        server.wait(timeout=5)


def test_rendered_cluster_confs_form_a_real_redis_cluster(tmp_path):
    """With several kv hosts redis.conf turns cluster mode on: three real redis-servers started
    from the rendered file (each with its own port, directory and cluster state file on the
    command line) form one cluster with the role's tool (kvstack_node.redis_cluster), every slot
    served, each member announcing the address it was given."""
    from kvstack_node import redis_cluster

    proc, conf = render_redis(
        tmp_path,
        redis_server_bind="127.0.0.1",
        redis_server_data_dir=str(tmp_path),
        redis_server_cluster_enabled=True,
        redis_server_cluster_announce_ip="127.0.0.1",
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    text = conf.read_text()
    assert "cluster-enabled yes" in text and "cluster-require-full-coverage no" in text
    assert f"masterauth {PASSWORD}" in text and "cluster-announce-ip 127.0.0.1" in text
    servers, addrs = [], []
    try:
        for i in range(3):
            d = tmp_path / f"m{i}"
            d.mkdir()
            port = free_port()
            while port + 10000 > 65535:
                port = free_port()
            args = ["--port", str(port), "--dir", str(d), "--pidfile", str(d / "pid")]
            log = (d / "redis.log").open("a")
            servers.append(
                subprocess.Popen(["redis-server", str(conf), *args], stdout=log, stderr=subprocess.STDOUT)
            )
            addrs.append(f"127.0.0.1:{port}")
        for a in addrs:
            deadline = time.monotonic() + 5
            while True:
                try:
                    socket.create_connection(("127.0.0.1", int(a.rsplit(":", 1)[1])), timeout=0.2).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, a
                    time.sleep(0.05)
        out = redis_cluster.ensure(addrs, PASSWORD, timeout_s=60)
        assert (
            out["state"] == "ok" and out["slots_assigned"] == 16384 and sorted(out["slots"]) == sorted(addrs)
        )
        assert all(redis_cluster.read(a, PASSWORD).members.keys() >= set(addrs) for a in addrs)
    finally:
        for s in servers:
            s.terminate()
            s.wait(timeout=10)


def test_a_standalone_server_holding_keys_is_refused_as_a_cluster_member(tmp_path, redis):
    """The validate step (site.yml's preflight) reads the running server: standalone with keys, it
    cannot join the cluster the inventory now asks for, and the run stops naming it, before its
    configuration changes; once emptied it passes."""
    import redis as redis_py  # (the fixture's name shadows the module here)
    from local_redis import PASSWORD as LOCAL_PASSWORD

    host, port = redis
    client = redis_py.Redis(host=host, port=port, password=LOCAL_PASSWORD)
    client.set("kvstack:left-from-standalone", b"x")
    cluster = {
        "kv_password": LOCAL_PASSWORD,
        "redis_server_bind": host,
        "redis_server_port": port,
        "redis_server_cluster_enabled": True,
        "redis_server_cluster_announce_ip": host,
    }
    try:
        proc, _ = render_redis(tmp_path, **cluster, test_tasks_from="validate.yml")
        assert proc.returncode != 0
        assert "runs standalone and holds 1 keys" in proc.stdout and "nothing was changed" in proc.stdout
        assert LOCAL_PASSWORD not in proc.stdout
    finally:
        client.delete("kvstack:left-from-standalone")
        client.close()
    proc, _ = render_redis(tmp_path, **cluster, test_tasks_from="validate.yml")
    assert proc.returncode == 0, proc.stdout[-3000:]
