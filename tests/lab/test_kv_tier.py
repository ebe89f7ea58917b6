"""The lab's KV tier keeps its data across re-provisioning with a changed setting and restarts."""

from __future__ import annotations

import uuid

import pytest
import redis

from kvstack import inventory, provision


@pytest.fixture(scope="module")
def kv_client(up_lab):
    inv = inventory.load(inventory.LAB_INVENTORY)
    name, hostvars = next(iter(inv.hosts("kv").items()))
    client = redis.Redis(
        host=hostvars["ansible_host"],
        port=int(hostvars["kv_port"]),
        password=hostvars["kv_password"],
        socket_timeout=10,
    )
    return name, client


def test_unauthenticated_client_refused_from_the_host(kv_client):
    _, client = kv_client
    anon = redis.Redis(
        host=client.connection_pool.connection_kwargs["host"],
        port=client.connection_pool.connection_kwargs["port"],
        socket_timeout=5,
    )
    with pytest.raises(redis.AuthenticationError):
        anon.ping()


def test_key_survives_reprovisioning_with_changed_tuning_and_restart(kv_client, testinfra_backend):
    name, client = kv_client
    key, value = f"kvstack:survive:{uuid.uuid4().hex}", uuid.uuid4().bytes * 1024
    client.set(key, value)
    host = testinfra_backend(name)
    pid_before = host.check_output("systemctl show -p MainPID --value redis-server")
    try:
        # A changed tuning value: the role re-renders the config and its handler restarts the server.
        out = provision.playbook(
            "site.yml",
            limit=name,
            tags="redis_server",
            extra_vars={"redis_server_maxmemory_mb": 1999},
            capture=True,
        ).stdout
        assert provision.recap(out)[name]["changed"] >= 1
        assert host.check_output("systemctl show -p MainPID --value redis-server") != pid_before
        host.run_expect([0], "systemctl restart redis-server")
        client.connection_pool.disconnect()
        assert client.config_get("maxmemory")["maxmemory"] == str(1999 * 1024 * 1024)
        assert client.get(key) == value
    finally:
        provision.playbook("site.yml", limit=name, tags="redis_server", capture=True)
    client.connection_pool.disconnect()
    assert client.get(key) == value
    client.delete(key)
