"""roles/nvidia_driver on lab nodes (no GPU): a clear skip, or a clear failure when required."""

from __future__ import annotations

from kvstack import provision

PLAYBOOK = "tests/lab/playbooks/nvidia_driver.yml"


def test_node_without_gpu_is_skipped_with_a_message(up_lab):
    node = next(n for n in up_lab.nodes if "serve" in n)
    out = provision.playbook(PLAYBOOK, limit=node, capture=True)
    assert f"Skipped: {node} has no NVIDIA GPU (PCI vendor 10de)" in out.stdout
    rec = provision.recap(out.stdout)[node]
    assert rec["failed"] == 0
    assert rec["changed"] == 0


def test_node_without_gpu_fails_when_a_gpu_is_required(up_lab):
    node = next(n for n in up_lab.nodes if "serve" in n)
    out = provision.playbook(
        PLAYBOOK, limit=node, extra_vars={"nvidia_driver_required": "true"}, capture=True, check_rc=False
    )
    assert out.returncode != 0
    assert "has no NVIDIA GPU (PCI vendor 10de) but nvidia_driver_required is true" in out.stdout
    assert provision.recap(out.stdout)[node]["changed"] == 0
