"""The lab itself: lab-up is idempotent; lab-down leaves nothing; nodes come back with services."""

from __future__ import annotations

import pytest

from kvstack import lab


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
