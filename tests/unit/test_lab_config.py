"""The lab reads its nodes and settings from the lab inventory and rejects bad ones."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kvstack import lab
from kvstack.inventory import LAB_INVENTORY


def _inventory(tmp_path: Path, hosts: str, lab_vars: str | None = None) -> Path:
    inv = tmp_path / "inv"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "hosts.yml").write_text(textwrap.dedent(hosts))
    src = (LAB_INVENTORY / "group_vars" / "all" / "lab.yml").read_text()
    (inv / "group_vars" / "all" / "lab.yml").write_text(lab_vars if lab_vars is not None else src)
    return inv


def test_lab_inventory_has_two_serving_nodes_and_a_kv_node():
    cfg = lab.load_config()
    assert len(cfg.nodes) >= 3
    assert all(ip.startswith("10.77.0.") for ip in cfg.nodes.values())
    assert cfg.gateway == "10.77.0.1"
    assert cfg.image.name.endswith(".tar.zst")


def test_node_outside_the_bridge_network_is_rejected(tmp_path):
    inv = _inventory(
        tmp_path,
        """
        all:
          hosts:
            n1: {ansible_host: 192.168.5.3}
    """,
    )
    with pytest.raises(lab.LabError, match=r"n1: 192\.168\.5\.3 is not a free address in lab_bridge_cidr"):
        lab.load_config(inv)


def test_gateway_address_and_duplicates_are_rejected(tmp_path):
    inv = _inventory(
        tmp_path,
        """
        all:
          hosts:
            n1: {ansible_host: 10.77.0.1}
    """,
    )
    with pytest.raises(lab.LabError, match="not a free address"):
        lab.load_config(inv)
    inv2 = _inventory(
        tmp_path / "b",
        """
        all:
          hosts:
            n1: {ansible_host: 10.77.0.5}
            n2: {ansible_host: 10.77.0.5}
    """,
    )
    with pytest.raises(lab.LabError, match="used twice"):
        lab.load_config(inv2)


def test_missing_lab_settings_are_named(tmp_path):
    inv = _inventory(
        tmp_path, "all:\n  hosts:\n    n1: {ansible_host: 10.77.0.5}\n", lab_vars="lab_bridge: x\n"
    )
    with pytest.raises(lab.LabError, match="lacks lab_bridge_cidr"):
        lab.load_config(inv)


def test_host_pip_setup_is_found_for_the_nodes():
    files, dirs = lab._host_pip_config()
    # Every directory the host's pip reads from must be bound into the nodes.
    for d in dirs:
        assert d.is_dir()
    assert all(f.is_file() for f in files)
