"""End-to-end tests on the lab: skipped with --no-lab or a non-lab inventory."""

import subprocess
import sys

import pytest

from kvstack import REPO


@pytest.fixture(scope="session")
def up_lab(lab):
    """The provisioned lab (skips the test when the session does not manage it)."""
    if lab is None:
        pytest.skip("lab tests need the lab inventory and no --no-lab")
    return lab


@pytest.fixture(scope="session")
def testinfra_backend(up_lab, request):
    """testinfra_backend(name): a testinfra Host for a lab node (same inventory as the checks)."""
    import testinfra

    inv = request.config.option.ansible_inventory

    def get(name: str):
        return testinfra.get_host(f"ansible://{name}", ansible_inventory=inv)

    return get


@pytest.fixture(scope="session")
def node_checks():
    """node_checks(test, *pytest_args): run node checks as a user would, in a fresh pytest, as is."""

    def run(test: str, *args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-lab", *args, test]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
        print(proc.stdout[-3000:])
        return proc

    return run
