"""Run the project's playbooks with the venv's Ansible, from the repository root."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
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
    capture: bool = False,
    check_rc: bool = True,
    echo: bool = True,
    timeout_s: float | None = None,
) -> subprocess.CompletedProcess:
    """Run ``ansible-playbook`` from the repo root.

    Output is streamed, or captured (``capture=True``: stdout and stderr together in
    ``.stdout``, also echoed unless ``echo=False``). Raises CalledProcessError on failure when
    ``check_rc``; with ``timeout_s`` a run still going after that long is stopped (the whole process
    group) and raises TimeoutExpired, its output so far printed first.
    """
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
        # strings as key=value (Ansible's own parsing); anything else as JSON, so booleans and
        # numbers keep their type
        cmd += ["-e", f"{key}={value}" if isinstance(value, str) else json.dumps({key: value})]
    cmd += extra_args or []
    progress("running " + " ".join(cmd[1:]))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0"}
    if not capture:
        return subprocess.run(cmd, cwd=REPO, env=env, check=check_rc, timeout=timeout_s)
    proc = _run_captured(cmd, env, timeout_s)
    if echo:
        sys.stdout.write(proc.stdout)
    if check_rc and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout)
    return proc


def _run_captured(cmd: list[str], env: dict, timeout_s: float | None) -> subprocess.CompletedProcess:
    """Run *cmd* with its output in a file, not a pipe: the wait ends when ansible-playbook does,
    even if something it started still holds its output open. Stopped (its process group) on a
    timeout or an interruption (Ctrl-C, a test's timeout), after printing the last of its output,
    so the task it was on shows."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, text=True, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout_s)
        except BaseException as e:
            _stop_group(proc)
            out.seek(0)
            text = out.read()
            sys.stderr.write(f"ansible-playbook stopped ({type(e).__name__}); its last output:\n")
            sys.stderr.write(text[-6000:] + "\n")
            if isinstance(e, subprocess.TimeoutExpired):
                raise subprocess.TimeoutExpired(cmd, e.timeout, output=text) from None
            raise
        out.seek(0)
        return subprocess.CompletedProcess(cmd, rc, out.read())


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of *proc*, SIGKILL it if it is still there after 10 s."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def apply(
    log: Path,
    heading: str,
    *,
    tags: str,
    inventory: str | Path | None = None,
    limit: str | None = None,
    extra_vars: dict | None = None,
) -> float:
    """``site.yml --tags TAGS`` (with *extra_vars*, on *limit*'s hosts), its output appended to
    *log*: how the bench switches a configuration. Returns the seconds it took.

    Raises:
        RuntimeError: the run failed (the message names the tags and the log).
    """
    t0 = time.monotonic()
    out = playbook_logged(
        "site.yml", log, heading, inventory=inventory, limit=limit, tags=tags, extra_vars=extra_vars
    )
    if out.returncode != 0:
        raise RuntimeError(f"site.yml --tags {tags} failed ({heading}, rc {out.returncode}); see {log}")
    return time.monotonic() - t0


def playbook_logged(name: str, log: Path, heading: str, **kwargs) -> subprocess.CompletedProcess:
    """:func:`playbook` run quietly (output captured, rc left to the caller), its output appended
    to *log* under ``=== heading``; for the bench's switches, which keep Ansible out of the terminal."""
    out = playbook(name, capture=True, echo=False, check_rc=False, **kwargs)
    with log.open("a") as f:
        f.write(f"=== {heading}\n{out.stdout}\n")
    return out


_RECAP = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$")


def recap(output: str) -> dict[str, dict[str, int]]:
    """Parse the PLAY RECAP of ``ansible-playbook`` output: host -> {ok, changed, failed, ...}."""
    out: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        m = _RECAP.match(line.strip()) if in_recap else None
        if m:
            out[m["host"]] = {k: int(v) for k, v in (kv.split("=") for kv in m["counts"].split())}
    return out
