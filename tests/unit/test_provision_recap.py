"""PLAY RECAP parsing, which the idempotency tests rely on."""

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
