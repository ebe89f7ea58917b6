"""Run the project's playbooks with the venv's Ansible, from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kvstack import REPO
from kvstack.log import progress


def ansible_bin(name: str) -> str:
    """Path of an Ansible executable beside this interpreter (the project venv)."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else name


def playbook(
    playbook: str = "site.yml",
    inventory: str | Path | None = None,
    check: bool = False,
    diff: bool = False,
    limit: str | None = None,
    tags: str | None = None,
    extra_vars: dict | None = None,
    extra_args: list[str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``ansible-playbook`` (output streamed); raise CalledProcessError when it fails."""
    cmd = [ansible_bin("ansible-playbook"), playbook]
    if inventory:
        cmd += ["-i", str(inventory)]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    if limit:
        cmd += ["--limit", limit]
    if tags:
        cmd += ["--tags", tags]
    for key, value in (extra_vars or {}).items():
        cmd += ["-e", f"{key}={value}"]
    cmd += extra_args or []
    progress("running " + " ".join(cmd[1:]))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0"}
    return subprocess.run(cmd, cwd=REPO, env=env, check=True)
