"""A node reboot through playbooks/reboot.yml (ansible.builtin.reboot): the node really boots
again, every service that ran before runs again without re-provisioning, and its node checks
pass."""

from __future__ import annotations

import re
import time

from kvstack import provision

NODE = "lab-serve1"
KVSTACK_UNITS = re.compile(r"^(vllm@|lmcache|redis|kvrocks|prometheus-node-exporter|kvstack-|ssh)")


def _active_services(host) -> set[str]:
    out = host.check_output("systemctl list-units --type=service --state=active --no-legend --plain")
    return {line.split()[0] for line in out.splitlines() if KVSTACK_UNITS.match(line)}


def test_reboot_brings_every_service_back_and_checks_pass(up_lab, testinfra_backend, node_checks):
    host = testinfra_backend(NODE)
    boot_id = host.check_output("cat /proc/sys/kernel/random/boot_id")
    before = _active_services(host)
    assert {"lmcache.service", "vllm@main.service", "kvstack-firewall.service"} <= before, before
    start = time.monotonic()
    out = provision.playbook("playbooks/reboot.yml", limit=NODE, capture=True).stdout
    took = time.monotonic() - start
    back = re.search(r"back after (\d+) s", out)
    print(f"reboot of {NODE}: SSH back after {back.group(1) if back else '?'} s, serving after {took:.0f} s")
    assert host.check_output("cat /proc/sys/kernel/random/boot_id") != boot_id  # it did boot again
    after = _active_services(host)
    assert before <= after, f"not running after the reboot: {sorted(before - after)}"
    for unit in before:
        assert host.service(unit.removesuffix(".service")).is_enabled, unit
    # The node checks of its groups (all, serving), as a user would run them.
    checks = node_checks(
        "tests/node/test_common.py", "tests/node/test_serving.py", f"--hosts=ansible://{NODE}"
    )
    assert checks.returncode == 0, checks.stdout[-3000:]
