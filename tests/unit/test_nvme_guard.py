"""The nvme role's format guard, run for real on regular files standing in for devices.

Each test makes "devices" as regular files: empty, with an ext4 file system (mkfs.ext4), with an
MBR partition table or an md RAID superblock (written here, byte for byte as libblkid expects
them), then runs the role's ``guard.yml`` through ``ansible-playbook`` on the local machine. The
guard probes them with the real ``blkid -p`` and ``wipefs --no-act``, as on bare metal, and the
test checks its decision (shown by the playbook, read from the json callback) or its failure
message, and that no file was modified. Each scenario is one inventory host (connection local)
with its own variables, so one ansible-playbook run covers them all and a failing scenario fails
only its host; the whole-role scenarios (main.yml) run beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvstack import REPO

PLAYBOOK = REPO / "tests" / "unit" / "playbooks" / "role_entry_point.yml"
SIZE = 16 * 2**20


@dataclass
class Run:
    failed: bool  # the scenario's host failed (the role stopped it)
    messages: list[str]  # every "msg" of the host's task results, loop items included
    report: list  # the guard's nvme_guard_report; [] when it failed or did not run
    devices: list[Path]
    modified: list[Path]  # devices whose bytes changed during the run

    def said(self, text: str) -> bool:
        return any(text in m for m in self.messages)


def start_playbook(tmp: Path, hosts: dict[str, dict], tasks_from: str, **extra_vars) -> subprocess.Popen:
    """Start role_entry_point.yml (nvme, `tasks_from`) on one local inventory host per scenario."""
    tmp.mkdir(parents=True, exist_ok=True)
    inventory = tmp / "inventory.json"
    common = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "test_role": "nvme",
        "test_tasks_from": tasks_from,
    }
    if tasks_from == "guard.yml":
        common["test_show_var"] = "nvme_guard_report"
    inventory.write_text(json.dumps({"all": {"vars": common, "hosts": hosts}}))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_FORKS": str(max(len(hosts), 1)),
        "ANSIBLE_NOCOLOR": "1",
    }
    cmd = [str(Path(sys.executable).with_name("ansible-playbook")), str(PLAYBOOK), "-i", str(inventory)]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def host_results(document: dict, host: str) -> list[dict]:
    """`host`'s result of every task, in order, from the json callback's document."""
    return [
        task["hosts"][host]
        for play in document.get("plays", [])
        for task in play["tasks"]
        if host in task["hosts"]
    ]


def messages(result: dict) -> list[str]:
    found = [str(result["msg"])] if "msg" in result else []
    for item in result.get("results", []):
        found += messages(item)
    return found


def states(report: list) -> dict[str, str]:
    return {Path(entry["device"]).name: entry["state"] for entry in report}


def empty_device(path: Path) -> Path:
    with path.open("wb") as f:
        f.truncate(SIZE)
    return path


def ext4_device(path: Path, label: str) -> Path:
    empty_device(path)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, str(path)], check=True, capture_output=True)
    return path


def mbr_device(path: Path) -> Path:
    """A DOS partition table with one Linux partition (no file system)."""
    empty_device(path)
    with path.open("r+b") as f:
        f.seek(446)
        f.write(struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x83, b"\0\0\0", 2048, 8192))
        f.seek(510)
        f.write(b"\x55\xaa")
    return path


def md_member(path: Path, name: str) -> Path:
    """An md RAID0 member: a v1.2 superblock at 4 KiB, array name `name`, valid checksum."""
    empty_device(path)
    offset = 4096
    sb = bytearray(256 + 2)  # mdp_superblock_1 with max_dev = 1 role slot
    struct.pack_into("<II", sb, 0, 0xA92B4EFC, 1)  # magic, major_version
    sb[16:32] = uuid.uuid4().bytes  # set_uuid
    sb[32 : 32 + len(name)] = name.encode()  # set_name
    struct.pack_into("<II", sb, 88, 1024, 2)  # chunksize (sectors), raid_disks
    struct.pack_into("<Q", sb, 128, 2048)  # data_offset
    struct.pack_into("<Q", sb, 144, offset // 512)  # super_offset
    struct.pack_into("<I", sb, 220, 1)  # max_dev
    total = sum(struct.unpack_from("<64I", sb, 0)) + struct.unpack_from("<H", sb, 256)[0]
    struct.pack_into("<I", sb, 216, ((total & 0xFFFFFFFF) + (total >> 32)) & 0xFFFFFFFF)  # sb_csum
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(sb)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# What Ansible's facts say inside a lab node.
NSPAWN = {"virtualization_role": "guest", "virtualization_type": "systemd-nspawn"}

# Guard scenarios: name -> function(tmp dir) -> (devices, role variables).
SCENARIOS = {
    "empty": lambda t: ([empty_device(t / "empty.img")], {}),
    "ext4": lambda t: ([empty_device(t / "empty.img"), ext4_device(t / "used.img", "data")], {}),
    "ext4_forced": lambda t: (
        [ext4_device(t / "used.img", "data")],
        {"nvme_force_format": [str(t / "used.img")]},
    ),
    "prepared": lambda t: (
        [ext4_device(t / "ours.img", "kvstack-nvme")],
        {"nvme_fstype": "ext4", "nvme_fs_label": "kvstack-nvme"},
    ),
    "label_on_other_fstype": lambda t: (
        [ext4_device(t / "ours.img", "kvstack-nvme")],
        {"nvme_fstype": "xfs", "nvme_fs_label": "kvstack-nvme"},
    ),
    "partition_table": lambda t: ([mbr_device(t / "mbr.img")], {}),
    "other_md_member": lambda t: ([md_member(t / "md.img", "otherhost:data")], {}),
    "our_md_members": lambda t: (
        [md_member(t / f"m{i}.img", "node01:kvstack") for i in (1, 2)],
        {"nvme_md_name": "kvstack"},
    ),
    "partly_prepared_array": lambda t: (
        [md_member(t / "m1.img", "node01:kvstack"), empty_device(t / "new.img")],
        {"nvme_md_name": "kvstack"},
    ),
    "missing": lambda t: ([t / "nope.img"], {}),
}
# The whole role (main.yml): on this machine, and with the facts of a lab node (container).
ROLE_SCENARIOS = {"no_devices_whole_role": []}
CONTAINER_SCENARIOS = {
    "container_no_devices": [],
    "container_with_devices": [Path("/dev/disk/by-id/nvme-EXAMPLE_1")],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    """Every scenario's run: three ansible-playbook processes, started together and awaited."""
    tmp = tmp_path_factory.mktemp("nvme-guard")
    devices: dict[str, list[Path]] = {}
    guard_hosts = {}
    for name, make in SCENARIOS.items():
        devices[name], role_vars = make(tmp_path_factory.mktemp(name))
        guard_hosts[name] = {"nvme_devices": [str(d) for d in devices[name]], **role_vars}
    devices.update(ROLE_SCENARIOS | CONTAINER_SCENARIOS)
    before = {d: digest(d) for ds in devices.values() for d in ds if d.exists()}

    def hosts(scenarios: dict) -> dict:
        return {name: {"nvme_devices": [str(d) for d in ds]} for name, ds in scenarios.items()}

    procs = [
        start_playbook(tmp / "guard", guard_hosts, "guard.yml"),
        start_playbook(tmp / "role", hosts(ROLE_SCENARIOS), "main.yml"),
        start_playbook(tmp / "container", hosts(CONTAINER_SCENARIOS), "main.yml", ansible_facts=NSPAWN),
    ]
    results = {}
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=180)
        assert stdout.lstrip().startswith("{"), f"no json output: {stdout[-2000:]}{stderr[-2000:]}"
        document = json.loads(stdout)
        for name, stats in document["stats"].items():
            tasks = host_results(document, name)
            results[name] = Run(
                failed=stats["failures"] + stats["unreachable"] > 0,
                messages=[m for t in tasks for m in messages(t)],
                report=next((t["nvme_guard_report"] for t in tasks if "nvme_guard_report" in t), []),
                devices=devices[name],
                modified=[d for d in devices[name] if d in before and digest(d) != before[d]],
            )
    assert set(results) == set(devices), f"scenarios without a result: {set(devices) - set(results)}"
    return results


def refusal(run: Run) -> str:
    """The guard's failure message (the one that starts "nvme: refusing to format")."""
    return next((m for m in run.messages if m.startswith("nvme: refusing to format")), "")


def test_empty_device_passes(runs):
    run = runs["empty"]
    assert not run.failed, run.messages
    assert states(run.report) == {"empty.img": "empty"}
    assert not run.modified


def test_device_with_ext4_fails_naming_it_and_nothing_changes(runs):
    run = runs["ext4"]
    empty, used = run.devices
    assert run.failed
    message = refusal(run)
    assert f"refusing to format {used}: it holds ext4 (label 'data')" in message
    assert str(empty) not in message  # only the device that holds data is named
    assert "Nothing was changed on any device" in message and "nvme_force_format" in message
    assert not run.modified


def test_same_device_passes_when_listed_in_nvme_force_format(runs):
    run = runs["ext4_forced"]
    assert not run.failed, run.messages
    found = "ext4 (label 'data') at offset 0x438"
    assert run.report == [{"device": str(run.devices[0]), "state": "foreign", "forced": True, "found": found}]
    assert run.said("nvme_force_format lists it, so it will be wiped")
    assert not run.modified  # the guard itself never wipes


def test_device_with_the_expected_file_system_is_already_prepared(runs):
    run = runs["prepared"]
    assert not run.failed, run.messages
    assert states(run.report) == {"ours.img": "prepared"}
    assert run.said(f"{run.devices[0]} is already prepared (it holds ext4 (label 'kvstack-nvme')")
    assert run.said("not formatted again")
    assert not run.modified


def test_expected_label_on_another_file_system_type_is_refused(runs):
    run = runs["label_on_other_fstype"]
    assert run.failed
    assert f"refusing to format {run.devices[0]}: it holds ext4 (label 'kvstack-nvme')" in refusal(run)


def test_partition_table_is_refused(runs):
    run = runs["partition_table"]
    assert run.failed
    assert f"refusing to format {run.devices[0]}: it holds dos partition table" in refusal(run)
    assert not run.modified


def test_member_of_another_md_array_is_refused(runs):
    run = runs["other_md_member"]
    assert run.failed
    expected = f"refusing to format {run.devices[0]}: it holds linux_raid_member (label 'otherhost:data')"
    assert expected in refusal(run)
    assert not run.modified


def test_members_of_our_array_are_already_prepared(runs):
    run = runs["our_md_members"]
    assert not run.failed, run.messages
    assert states(run.report) == {"m1.img": "prepared", "m2.img": "prepared"}
    assert run.said("is already prepared (it holds linux_raid_member (label 'node01:kvstack')")


def test_partly_prepared_array_is_refused(runs):
    run = runs["partly_prepared_array"]
    assert run.failed
    assert run.said("1 of 2 devices are members of md array 'kvstack' and the others are not")
    assert run.said(f"the others are not ({run.devices[1]})")


def test_missing_device_is_named(runs):
    run = runs["missing"]
    assert run.failed
    assert run.said(f"nvme_devices lists devices that do not exist: {run.devices[0]}")


def test_role_without_devices_does_nothing_but_say_so(runs):
    """The whole role (main.yml) with nvme_devices empty: a message, then the role ends."""
    run = runs["no_devices_whole_role"]
    assert not run.failed, run.messages
    assert run.said("nvme_devices is empty on no_devices_whole_role: no SSD tier is prepared")
    assert not any("wipefs" in m or "blkid" in m for m in run.messages)


def test_container_without_devices_is_skipped_with_a_message(runs):
    run = runs["container_no_devices"]
    assert not run.failed, run.messages
    assert run.said("Skipped: container_no_devices is a container (systemd-nspawn) and nvme_devices is empty")


def test_container_with_devices_is_refused(runs):
    run = runs["container_with_devices"]
    assert run.failed
    assert run.said("but it is a container (systemd-nspawn): its host owns the devices")
