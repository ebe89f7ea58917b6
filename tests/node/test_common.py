"""Node checks for every node: roles/common, roles/firewall and roles/node_exporter."""

from __future__ import annotations

import json

import pytest

testinfra_hosts = ["ansible://all"]

CONTAINER_TYPES = ("container", "systemd-nspawn", "lxc", "docker", "podman", "containerd")


def _is_container(host) -> bool:
    virt = host.run("systemd-detect-virt --container")
    return virt.rc == 0


def test_ssh_running(host):
    ssh = host.service("ssh")
    assert ssh.is_running
    assert ssh.is_enabled


def test_base_packages_installed(host, expected):
    for pkg in expected("common", "common_packages") + expected("common", "common_packages_extra"):
        assert host.package(pkg).is_installed, pkg


def test_service_user(host, expected):
    user = host.user(expected("common", "common_service_user"))
    assert user.exists
    assert user.group == expected("common", "common_service_group")
    assert user.shell == "/usr/sbin/nologin"
    home = host.file(expected("common", "common_service_home"))
    assert home.is_directory
    assert home.user == user.name
    assert home.mode == 0o750


def test_network_sysctls_applied(host, expected):
    for key, value in expected("common", "common_sysctl_net").items():
        live = host.check_output(f"sysctl -n {key}")
        assert live.split() == str(value).split(), key


def test_kernel_tuning_only_outside_containers(host, expected):
    unit = host.file("/etc/systemd/system/kvstack-host-tuning.service")
    if _is_container(host):
        assert not unit.exists
    else:
        assert unit.exists
        assert host.service("kvstack-host-tuning").is_enabled
        for key, value in expected("common", "common_sysctl_kernel").items():
            assert host.check_output(f"sysctl -n {key}").split() == str(value).split(), key


def test_limits_for_service_user(host, expected):
    user = expected("common", "common_service_user")
    limits = host.file("/etc/security/limits.d/90-kvstack.conf")
    assert limits.contains(f"{user} hard nofile {expected('common', 'common_nofile_limit')}")


def test_node_exporter_serves_on_cluster_address_only(host, cluster_address, expected):
    svc = host.service("prometheus-node-exporter")
    assert svc.is_running
    assert svc.is_enabled
    port = expected("node_exporter", "node_exporter_port")
    assert host.socket(f"tcp://{cluster_address}:{port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening
    assert not host.socket(f"tcp://127.0.0.1:{port}").is_listening
    metrics = host.check_output(f"curl -fsS http://{cluster_address}:{port}/metrics")
    assert "node_cpu_seconds_total" in metrics


def test_units_pass_systemd_analyze_verify(host):
    out = host.run("systemd-analyze verify --man=no prometheus-node-exporter.service")
    assert out.rc == 0, out.stderr


def _nft(host, what: str) -> list[dict]:
    return json.loads(host.check_output(f"nft -j list {what}"))["nftables"]


def test_firewall_loaded_and_covers_every_listening_port(host, hostvars, expected):
    """The firewall's table is loaded at boot, drops by default, and names every port a service
    listens on beyond loopback: a port it missed would be closed (policy drop) or open to all."""
    if not expected("firewall", "firewall_enabled"):
        pytest.skip("firewall_enabled is false in this inventory")
    unit = host.service("kvstack-firewall")
    assert unit.is_enabled
    assert unit.is_running
    table = expected("firewall", "firewall_table")
    items = _nft(host, f"table inet {table}")
    ports = {
        i["set"]["name"]: set(i["set"].get("elem", []))
        for i in items
        if i.get("set", {}).get("type") == "inet_service"
    }
    chain = next(i["chain"] for i in items if "chain" in i and i["chain"]["name"] == "input")
    assert chain["policy"] == expected("firewall", "firewall_input_policy")
    ssh = int(hostvars.get("firewall_ssh_port", hostvars.get("ansible_port", 22)))
    named = ports["cluster_ports"] | ports["public_ports"] | {ssh}
    listening = set()
    for line in host.check_output("ss -Hltn").splitlines():
        local = line.split()[3]
        addr, _, port = local.rpartition(":")
        if addr.strip("[]") in ("::1", "localhost") or addr.startswith("127."):
            continue
        listening.add(int(port))
    assert listening - named == set(), f"ports listening but not in the firewall: {listening - named}"
