"""Security on the lab: a vLLM API key, once set, is required on every API route; the key never
shows in Ansible's output, the unit, the process list or a world-readable file."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import urllib.error
import urllib.request

import pytest

from kvstack import provision

NODE, URL = "lab-serve2", "http://10.77.0.12:8000"


def _status(path: str, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(URL + path, headers=headers), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _apply(extra: dict | None) -> str:
    """site.yml --tags vllm on NODE, extra vars from a root-only file (never on a command line)."""
    args: list[str] = []
    path = None
    if extra:
        fd, path = tempfile.mkstemp(suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(extra, f)
        args = ["-e", f"@{path}"]
    try:
        out = provision.playbook(
            "site.yml", limit=NODE, tags="vllm", extra_args=args, capture=True, echo=False
        )
    finally:
        if path:
            os.unlink(path)
    return out.stdout


@pytest.fixture(scope="module")
def api_key(up_lab):
    key = "kvstack-test-" + secrets.token_hex(12)
    output = _apply({"vllm_api_key": key})
    yield key, output
    _apply(None)  # back to the inventory (no key in the lab)
    assert _status("/v1/models") == 200


def test_api_requires_the_key(api_key):
    key, _ = api_key
    assert _status("/v1/models") == 401
    assert _status("/v1/models", "wrong-" + key) == 401
    assert _status("/v1/models", key) == 200
    assert _status("/health") == 200  # liveness stays open for load balancers


def test_key_is_not_leaked(api_key, testinfra_backend):
    key, output = api_key
    assert key not in output  # no_log on every task that handles it
    node = testinfra_backend(NODE)
    assert key not in node.check_output("ps -eo args")
    assert key not in node.check_output("systemctl cat vllm@main")
    env = node.file("/etc/vllm/main.env")
    assert env.contains(key) and env.user == "root" and not env.mode & 0o007  # not world-readable
