"""The lab itself: lab-up is idempotent; lab-down leaves nothing; nodes come back with services."""

from __future__ import annotations

import subprocess

import pytest

from kvstack import REPO, lab, provision


def test_lab_up_twice_is_harmless(up_lab):
    pids = {n: lab.node_pid(up_lab, n) for n in up_lab.nodes}
    lab.up()
    assert {n: lab.node_pid(up_lab, n) for n in up_lab.nodes} == pids
    assert all(pids.values())


@pytest.mark.last
def test_lab_down_leaves_nothing_and_up_restores_services(up_lab, testinfra_backend):
    lab.down()
    assert lab.leftovers() == []
    assert not any(lab.node_pid(up_lab, n) for n in up_lab.nodes)
    lab.up()
    for name in up_lab.nodes:
        host = testinfra_backend(name)
        # Enabled services come back on boot: nothing needs re-provisioning.
        state = host.run("timeout 60 systemctl is-system-running --wait")
        failed = host.run("systemctl --failed --no-legend").stdout
        assert state.stdout.strip() == "running", f"{name}: {state.stdout.strip()}; failed units: {failed}"
        assert host.service("prometheus-node-exporter").is_running


def test_each_connection_reaches_its_own_node(up_lab, testinfra_backend):
    """Ansible and testinfra reach the node they name (no shared SSH control socket)."""
    for name in up_lab.nodes:
        assert testinfra_backend(name).check_output("hostname") == name
    proc = subprocess.run(
        [provision.ansible_bin("ansible"), "all", "-o", "-m", "ansible.builtin.command", "-a", "hostname"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    seen = {line.split(" | ")[0]: line.rsplit(")", 1)[-1].strip() for line in proc.stdout.splitlines()}
    assert seen == {n: n for n in up_lab.nodes}, proc.stdout
