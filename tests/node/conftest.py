"""Node checks (testinfra): run against any inventory with the same groups.

    pytest tests/node --ansible-inventory inventory/lab                 # the lab (default)
    pytest tests/node --no-lab --ansible-inventory inventory/mycluster  # bare metal

Each module names its group in ``testinfra_hosts``. Expected values come from the
inventory when it sets them, else from the role's defaults.
"""

from __future__ import annotations

import ipaddress
import shlex
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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("kvstack").addoption(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override an inventory variable for the checks (as `ansible-playbook -e` did)",
    )


@pytest.fixture(scope="module")
def hostvars(host, request) -> dict:
    """The host's inventory variables (group and host vars, not rendered), with --set overrides."""
    out = dict(host.ansible.get_variables())
    for item in request.config.option.set:
        name, _, value = item.partition("=")
        out[name] = yaml.safe_load(value)
    return out


@pytest.fixture(scope="module")
def expected(hostvars):
    """expected(role, name): the inventory's value of a role variable, else the role default, else
    the shared default (roles/kvstack_defaults owns the settings several roles read: ports,
    vllm_instances)."""

    def get(role: str, name: str):
        if name in hostvars:
            return hostvars[name]
        defaults = _role_defaults(role)
        return defaults[name] if name in defaults else _role_defaults("kvstack_defaults")[name]

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


# The node tools' directory (roles/node_tools; kvstack_defaults' kvstack_tools_dir).
TOOLS = "/opt/kvstack/tools"


@pytest.fixture(scope="module")
def resp(host):
    """resp(addr, port, password, *commands): RESP replies, sent from the node under test with the
    project's RESP client as the roles installed it (``python3 -m kvstack_node.resp``, the node's
    own python3), so the check talks to the server over the cluster address like a client.

    Each command is its arguments joined by '|'; '@PASSWORD' stands for the password, which
    travels in the environment, not on the command line.
    """

    def send(addr: str, port: int, password: str, *commands: str) -> list[str]:
        env = f"KV_PASSWORD={shlex.quote(password)} PYTHONPATH={TOOLS}"
        cmd = f"{env} python3 -m kvstack_node.resp {addr} {port} " + " ".join(
            shlex.quote(c) for c in commands
        )
        return host.check_output(cmd).splitlines()

    return send


@pytest.fixture(scope="module")
def node_tool(host):
    """node_tool(module, *args, password=''): stdout of ``python3 -m kvstack_node.<module> ARGS`` run
    on the node under test as the roles installed it (a password goes in KV_PASSWORD)."""

    def run(module: str, *args: str, password: str = "") -> str:
        env = f"KV_PASSWORD={shlex.quote(password)} PYTHONPATH={TOOLS}"
        return host.check_output(
            f"{env} python3 -m kvstack_node.{module} " + " ".join(map(shlex.quote, args))
        )

    return run


@pytest.fixture(scope="session")
def inv(request):
    """The whole inventory (every host's variables), as ``ansible-inventory`` reads it."""
    from kvstack import inventory

    return inventory.load(request.config.option.ansible_inventory)
