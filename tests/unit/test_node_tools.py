"""The node tools package (roles/node_tools/files/kvstack_node): apart from the controller, the
stdlib-only modules run with a bare python3, and the one RESP client's command form."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from local_redis import PASSWORD

from kvstack import REPO

NODE = REPO / "roles" / "node_tools" / "files" / "kvstack_node"
#: Run with a node's own /usr/bin/python3 (units, timers, node checks): the standard library only.
STDLIB_ONLY = ("resp", "kv_janitor", "kv_watchdog", "datapath")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_node_code_never_imports_the_controller_package():
    for path in sorted(NODE.glob("*.py")):
        assert "kvstack" not in _imports(path), f"{path.name} imports the controller package kvstack"


def test_no_node_code_left_beside_the_controller_or_in_other_roles():
    node_modules = {p.stem for p in NODE.glob("*.py")} - {"__init__"}
    controller = {p.stem for p in (REPO / "scripts" / "kvstack").rglob("*.py")}
    assert not node_modules & controller, node_modules & controller
    stray = [p for p in (REPO / "roles").glob("*/files/*.py")]
    assert not stray, f"node code outside roles/node_tools: {stray}"


@pytest.mark.parametrize("module", STDLIB_ONLY)
def test_stdlib_only_modules_import_with_a_bare_python(module, tmp_path):
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(NODE.parent)}
    proc = subprocess.run(
        [sys.executable, "-S", "-s", "-c", f"import kvstack_node.{module}"],
        env=env, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_resp_command_form_prints_each_reply_on_one_line(redis):
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(NODE.parent), "KV_PASSWORD": PASSWORD}
    cmds = [
        "PING",
        "AUTH|@PASSWORD",
        "SET|k1|v a l",
        "GET|k1",
        "GET|missing",
        "DEL|k1",
        "INFO|stats",
        "NOSUCH",
    ]
    proc = subprocess.run(
        [sys.executable, "-S", "-s", "-m", "kvstack_node.resp", redis[0], str(redis[1]), *cmds],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("-NOAUTH"), lines
    assert lines[1:6] == ["+OK", "+OK", "$5 v a l", "$-1", ":1"], lines
    assert "total_net_input_bytes:" in lines[6] and "\r" not in lines[6], lines[6][:200]
    assert lines[7].startswith("-ERR"), lines
    assert PASSWORD not in proc.stdout + proc.stderr
