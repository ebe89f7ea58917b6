"""Shared test setup.

Tiers: ``tests/unit`` (no lab, seconds), ``tests/gpu`` (the GPU path against the pinned software,
without a GPU: roles rendered for CUDA nodes, parsers on a lab node, the CUDA set against the
package index), ``tests/node`` (testinfra checks per group, against ``--ansible-inventory``; default the lab),
``tests/lab`` (end to end on the lab).

With the default inventory the session brings the lab up and provisions it with site.yml
once (``lab`` fixture); ``--no-lab`` runs node checks against whatever the inventory names,
as is; ``--keep-lab`` leaves a lab this session started running afterwards; ``--dynamo`` adds
the end-to-end tests that install NVIDIA Dynamo on the lab and bench it (optional like Dynamo
itself: about 20 more minutes, which the default run leaves out to fit CI's time);
``--bench-full`` adds the bench's AIPerf cross-check (AIPerf installed into ``.venv-aiperf`` on
first use) and its routing runs without the shared tier to the bench lab test; ``--pinned-set``
adds pip's resolution of vLLM's whole CUDA set (about 4 GB downloaded per Python); ``--kv-cluster``
adds growing the lab's sharded KV tier (tests/lab/test_sharded_kv_tier.py) by a fourth kv host. The
``--profiles`` option adds the four tier-profile switches of test_serving_profiles.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "roles" / "node_tools" / "files")]  # kvstack, kvstack_node

from kvstack import lab as labmod  # noqa: E402
from kvstack import provision  # noqa: E402

# Tools (ansible-inventory, ansible-playbook) from the venv even when it is not activated.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("ANSIBLE_CONFIG", str(REPO / "ansible.cfg"))

TIER_ORDER = {"unit": 0, "gpu": 1, "node": 2, "lab": 3}
#: whether the session takes the lab down at its end (it brought it up, no --keep-lab): a final
#: test may then leave the lab as it changed it
LAB_GOES_DOWN = pytest.StashKey[bool]()
#: the bench lab test's limit with --bench-full (its default run fits pyproject's 1500 s)
BENCH_FULL_TIMEOUT_S = 3600


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvstack")
    group.addoption("--no-lab", action="store_true", help="do not bring up or provision the lab")
    group.addoption("--keep-lab", action="store_true", help="leave the lab running at the end")
    group.addoption(
        "--dynamo",
        action="store_true",
        help="also install NVIDIA Dynamo on the lab, check and bench it (test_dynamo_lab.py; +20 min)",
    )
    group.addoption(
        "--profiles",
        action="store_true",
        help="also switch a serving node through all four tier profiles (test_serving_profiles.py; +8 min)",
    )
    group.addoption(
        "--bench-full",
        action="store_true",
        help="the bench lab test with every step: the AIPerf cross-check (installs AIPerf) and "
        "routing without the shared tier (+10 min)",
    )
    group.addoption(
        "--kv-cluster",
        action="store_true",
        help="also grow the lab's sharded KV tier by a fourth kv host (test_sharded_kv_tier.py; +6 min)",
    )
    group.addoption(
        "--pinned-set",
        action="store_true",
        help="also let pip resolve vLLM's whole CUDA set for each Python (tests/gpu; downloads ~8 GB)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if not config.option.ansible_inventory:
        config.option.ansible_inventory = str(REPO / "inventory" / "lab")


def _tier(item: pytest.Item) -> int:
    parts = Path(str(item.fspath)).relative_to(REPO / "tests").parts
    return TIER_ORDER.get(parts[0], 9) if len(parts) > 1 else 9


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run fast tiers first: unit, the GPU path, node checks, end-to-end lab tests (stable order;
    in a tier the ``last`` tests, then the ``final`` ones).
    With ``--bench-full`` the bench lab test's run (its first test's setup) may take an hour."""

    def rank(it: pytest.Item) -> int:
        return 2 if it.get_closest_marker("final") else 1 if it.get_closest_marker("last") else 0

    items.sort(key=lambda it: (_tier(it), rank(it)))
    if config.getoption("--bench-full"):
        for it in items:
            if it.path.name == "test_bench_lab.py":
                it.add_marker(pytest.mark.timeout(BENCH_FULL_TIMEOUT_S))


def is_lab_inventory(config: pytest.Config) -> bool:
    return Path(config.option.ansible_inventory).resolve() == (REPO / "inventory" / "lab").resolve()


@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest) -> labmod.LabConfig | None:
    """The lab, up and provisioned by site.yml (once per session). None with --no-lab."""
    config = request.config
    if config.option.no_lab or not is_lab_inventory(config):
        yield None
        return
    cfg = labmod.load_config()
    was_up = all(labmod.node_pid(cfg, n) for n in cfg.nodes)
    labmod.up()
    provision.playbook("site.yml")
    config.stash[LAB_GOES_DOWN] = not was_up and not config.option.keep_lab
    yield cfg
    if config.stash[LAB_GOES_DOWN]:
        labmod.down()


@pytest.fixture(scope="session")
def lab_goes_down(request: pytest.FixtureRequest, lab) -> bool:
    """Whether this session takes the lab down at its end (a ``final`` test may then leave the lab
    as it changed it)."""
    return request.config.stash.get(LAB_GOES_DOWN, False)
