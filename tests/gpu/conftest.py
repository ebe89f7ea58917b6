"""Fixtures of the GPU tier: the bare-metal example and a second scenario, rendered once per session
(scenario.py runs them)."""

from __future__ import annotations

import pytest
from scenario import DYNAMO, TP_SCENARIO, render


@pytest.fixture(scope="session")
def example(tmp_path_factory):
    """The bare-metal example inventory as it is, on Debian 12 nodes."""
    r = render(tmp_path_factory.mktemp("example"))
    assert r.returncode == 0, r.failure()
    return r


@pytest.fixture(scope="session")
def tp_ubuntu(tmp_path_factory):
    """Ubuntu 24.04 nodes, two tensor-parallel instances per node, a Dynamo worker on a fifth GPU,
    Ubuntu's own driver packages, and a Grace (arm64) GPU node."""
    r = render(
        tmp_path_factory.mktemp("tp"),
        "Ubuntu 24.04",
        inventories=[DYNAMO],
        nvidia_driver_source="distro",
        **TP_SCENARIO,
    )
    assert r.returncode == 0, r.failure()
    return r
