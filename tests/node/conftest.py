"""Node checks (testinfra): run against any inventory with the same groups.

    pytest tests/node --ansible-inventory inventory/lab                 # the lab (default)
    pytest tests/node --no-lab --ansible-inventory inventory/mycluster  # bare metal

Each module names its group in ``testinfra_hosts``. Expected values come from the
inventory when it sets them, else from the role's defaults.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session", autouse=True)
def _lab_ready(lab):
    """Bring the lab up and provision it first when the inventory is the lab's."""
    return lab


def _role_defaults(role: str) -> dict:
    return yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text()) or {}


@pytest.fixture(scope="module")
def hostvars(host) -> dict:
    """The host's inventory variables (group and host vars, not rendered)."""
    return host.ansible.get_variables()


@pytest.fixture(scope="module")
def expected(hostvars):
    """expected(role, name): the inventory's value of a role variable, else the role default."""

    def get(role: str, name: str):
        if name in hostvars:
            return hostvars[name]
        return _role_defaults(role)[name]

    return get


@pytest.fixture(scope="module")
def cluster_address(host, hostvars) -> str:
    """The node's address in cluster_network_cidr, as the roles compute it."""
    net = ipaddress.ip_network(hostvars["cluster_network_cidr"])
    for line in host.check_output("ip -4 -o addr show").splitlines():
        addr = line.split()[3].split("/")[0]
        if ipaddress.ip_address(addr) in net:
            return addr
    pytest.fail(f"{host.backend.get_pytest_id()}: no address in {net}")
