"""site.yml on the lab: a re-run changes nothing, check mode is clean, checks catch a stopped service."""

from __future__ import annotations

from kvstack import provision


def _total(rec: dict[str, dict[str, int]], key: str) -> int:
    return sum(c.get(key, 0) for c in rec.values())


def test_rerun_changes_nothing(up_lab):
    rec = provision.recap(provision.playbook("site.yml", capture=True).stdout)
    assert set(rec) == set(up_lab.nodes)
    assert _total(rec, "failed") == 0
    assert _total(rec, "unreachable") == 0
    assert _total(rec, "changed") == 0, rec


def test_check_mode_is_clean(up_lab):
    rec = provision.recap(provision.playbook("site.yml", check=True, diff=True, capture=True).stdout)
    assert set(rec) == set(up_lab.nodes)
    assert _total(rec, "failed") == 0
    assert _total(rec, "changed") == 0, rec


def test_node_checks_fail_when_service_stopped(up_lab, testinfra_backend, node_checks):
    node = next(iter(up_lab.nodes))
    host = testinfra_backend(node)
    test = "tests/node/test_common.py::test_node_exporter_serves_on_cluster_address_only"
    before = node_checks(test, f"--hosts=ansible://{node}")
    assert before.returncode == 0, before.stdout
    host.run_expect([0], "systemctl stop prometheus-node-exporter")
    try:
        stopped = node_checks(test, f"--hosts=ansible://{node}")
        assert stopped.returncode == 1, stopped.stdout
        assert "1 failed" in stopped.stdout
    finally:
        host.run_expect([0], "systemctl start prometheus-node-exporter")
    after = node_checks(test, f"--hosts=ansible://{node}")
    assert after.returncode == 0, after.stdout
