"""How ansible-playbook is run and read: PLAY RECAP parsing, which the idempotency tests rely
on, and the captured run (ends with the playbook, stopped at its timeout with its last output)."""

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from kvstack import provision
from kvstack.provision import recap

OUTPUT = """\
TASK [common : Install base packages] ******************************************
ok: [lab-kv1]

PLAY RECAP *********************************************************************
lab-kv1                : ok=21   changed=0    unreachable=0    failed=0    skipped=4    rescued=0    ignored=0
lab-serve1             : ok=20   changed=3    unreachable=1    failed=2    skipped=4    rescued=0    ignored=0
"""


def test_recap_parses_every_host_and_counter():
    rec = recap(OUTPUT)
    assert rec["lab-kv1"] == {
        "ok": 21,
        "changed": 0,
        "unreachable": 0,
        "failed": 0,
        "skipped": 4,
        "rescued": 0,
        "ignored": 0,
    }
    assert rec["lab-serve1"]["changed"] == 3
    assert rec["lab-serve1"]["unreachable"] == 1
    assert rec["lab-serve1"]["failed"] == 2


def test_recap_ignores_lines_before_the_recap():
    assert recap("ok: [lab-kv1]\nlab-kv1 : ok=1 changed=1\n") == {}


def test_captured_run_ends_with_its_process_not_with_what_it_left_running():
    """A child that keeps the output open (an SSH master, a daemon) does not hold the caller."""
    t0 = time.monotonic()
    proc = provision._run_captured(["sh", "-c", "echo done; sleep 30 &"], dict(os.environ), timeout_s=20)
    assert proc.returncode == 0 and proc.stdout == "done\n"
    assert time.monotonic() - t0 < 10


def test_captured_run_stopped_at_its_timeout_prints_where_it_was(capsys):
    """A hung run is stopped, its whole process group, and its last output is shown."""
    script = "echo 'TASK [etcd : Ask etcd]'; sleep 300 & echo $! > \"$0\"; wait"
    with tempfile.NamedTemporaryFile("r") as pidfile:
        with pytest.raises(subprocess.TimeoutExpired) as e:
            provision._run_captured(["sh", "-c", script, pidfile.name], dict(os.environ), timeout_s=2)
        child = int(pidfile.read())
    assert "TASK [etcd : Ask etcd]" in e.value.output
    assert "TASK [etcd : Ask etcd]" in capsys.readouterr().err
    time.sleep(0.5)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
