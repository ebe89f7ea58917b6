"""The lab: Debian nodes booted with systemd-nspawn on one machine.

Each host of ``inventory/lab`` becomes a container with real systemd, its own address on a
host bridge (NAT to the outside, so apt and pip reach the package registries exactly as the
host does) and SSH for Ansible. The recipe and its pitfalls are in ``shared/facts.md`` §1.

State lives under ``lab_state_dir`` (node root filesystems, pid files, logs, SSH key);
the debootstrap'ed base image is cached under ``lab_cache_dir``. Everything this module
creates on the host (bridge, NAT rule, cgroups, node processes) is recorded and removed by
:func:`down`.
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from kvstack import inventory
from kvstack.log import progress

#: Packages in the node image: what Ansible and systemd need, nothing more.
IMAGE_PACKAGES = (
    "systemd,systemd-sysv,dbus,openssh-server,python3,python3-apt,sudo,iproute2,"
    "iputils-ping,procps,ca-certificates"
)
#: Host tools the lab needs, with the Debian package that provides each.
HOST_TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "iptables": "iptables",
    "zstd": "zstd",
    "ip": "iproute2",
    "ssh-keygen": "openssh-client",
}
#: nspawn's exit code when the guest rebooted: the supervisor boots it again.
NSPAWN_REBOOT_RC = 133
IMAGE_VERSION = 1  # bump when the image customisation changes


class LabError(RuntimeError):
    """A lab operation failed; the message says what and how to fix it."""


@dataclasses.dataclass(frozen=True)
class LabConfig:
    """Lab settings, read from the lab inventory (``group_vars/all/lab.yml``)."""

    bridge: str
    bridge_cidr: str
    state_dir: Path
    cache_dir: Path
    suite: str
    ssh_key: Path
    nodes: dict[str, str]  # name -> address

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_interface(self.bridge_cidr).network

    @property
    def gateway(self) -> str:
        return str(ipaddress.ip_interface(self.bridge_cidr).ip)

    @property
    def image(self) -> Path:
        return self.cache_dir / f"{self.suite}-node-v{IMAGE_VERSION}.tar.zst"

    def node_dir(self, name: str) -> Path:
        return self.state_dir / "nodes" / name

    def pid_file(self, name: str) -> Path:
        return self.state_dir / "run" / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    @property
    def host_state(self) -> Path:
        return self.state_dir / "run" / "host.json"


def load_config(inventory_dir: Path | None = None) -> LabConfig:
    """Read the lab's settings and nodes from the lab inventory, validating each value."""
    inv = inventory.load(inventory_dir or inventory.LAB_INVENTORY)
    lab = inv.group_vars("all")
    required = (
        "lab_bridge",
        "lab_bridge_cidr",
        "lab_state_dir",
        "lab_cache_dir",
        "lab_debian_suite",
        "ansible_ssh_private_key_file",
    )
    missing = [k for k in required if k not in lab]
    if missing:
        raise LabError(f"{inv.path}: group_vars/all lacks {', '.join(missing)}")
    try:
        iface = ipaddress.ip_interface(lab["lab_bridge_cidr"])
    except ValueError as exc:
        raise LabError(f"lab_bridge_cidr: {exc}") from None
    if len(lab["lab_bridge"]) > 15:
        raise LabError(f"lab_bridge: {lab['lab_bridge']!r} is longer than 15 characters")
    nodes: dict[str, str] = {}
    for name, hostvars in inv.hosts().items():
        addr = hostvars.get("ansible_host")
        if not addr:
            raise LabError(f"{inv.path}: host {name} has no ansible_host")
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            raise LabError(f"{inv.path}: host {name}: ansible_host {addr!r} is not an IP address") from None
        if ip not in iface.network or ip == iface.ip:
            raise LabError(f"{inv.path}: host {name}: {ip} is not a free address in lab_bridge_cidr {iface}")
        if addr in nodes.values():
            raise LabError(f"{inv.path}: host {name}: address {addr} is used twice")
        nodes[name] = addr
    if not nodes:
        raise LabError(f"{inv.path}: no hosts")
    return LabConfig(
        bridge=lab["lab_bridge"],
        bridge_cidr=lab["lab_bridge_cidr"],
        state_dir=Path(lab["lab_state_dir"]),
        cache_dir=Path(lab["lab_cache_dir"]),
        suite=lab["lab_debian_suite"],
        ssh_key=Path(lab["ansible_ssh_private_key_file"]),
        nodes=nodes,
    )


# --------------------------------------------------------------------------- helpers


def _run(cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if check and proc.returncode != 0:
        raise LabError(
            f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie counts as dead.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def check_host() -> None:
    """Fail early, with the fix, when the host cannot run the lab."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (systemd-nspawn, bridges, iptables)")
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise LabError(
            f"missing host packages: {' '.join(missing)} (apt-get install -y {' '.join(missing)}; "
            "./bootstrap.sh does this)"
        )


# --------------------------------------------------------------------------- image


def _host_pip_config() -> tuple[list[Path], list[Path]]:
    """Return (files to copy, local directories to bind) that make up the host's pip setup.

    Files: pip's global and root's user configuration files and the constraint files they
    name. Directories: local wheel folders and ``file://`` indexes they point at.
    """
    candidates = [
        Path("/etc/xdg/pip/pip.conf"),
        Path("/etc/pip.conf"),
        Path.home() / ".pip/pip.conf",
        Path.home() / ".config/pip/pip.conf",
    ]
    files = [p for p in candidates if p.is_file()]
    dirs: list[Path] = []
    values: list[str] = []
    for f in list(files):
        cp = configparser.ConfigParser()
        cp.read(f)
        for section in cp.sections():
            for key in ("find-links", "extra-index-url", "index-url"):
                values += cp.get(section, key, fallback="").split()
            for c in cp.get(section, "constraint", fallback="").split():
                if Path(c).is_file() and Path(c) not in files:
                    files.append(Path(c))
    values += os.environ.get("PIP_FIND_LINKS", "").split()
    for v in values:
        if not v.startswith(("file://", "/")):
            continue
        path = Path(v.removeprefix("file://"))
        if path.name == "simple":  # bind the whole local index, not just its /simple
            path = path.parent
        if path.is_dir() and not any(path.is_relative_to(d) for d in dirs):
            dirs.append(path)
    return files, dirs


def _apt_files() -> list[Path]:
    """The host's apt sources and the apt.conf.d files that only tune fetching (no hooks)."""
    out = [p for p in (Path("/etc/apt/sources.list"),) if p.is_file() and p.stat().st_size]
    d = Path("/etc/apt/sources.list.d")
    out += sorted(p for p in d.glob("*") if p.suffix in (".list", ".sources")) if d.is_dir() else []
    conf = Path("/etc/apt/apt.conf.d")
    for p in sorted(conf.glob("*")) if conf.is_dir() else []:
        text = p.read_text(errors="replace")
        if "Acquire::" in text and "Invoke" not in text:
            out.append(p)
    return out


FIRSTBOOT_UNIT = """\
[Unit]
Description=Generate SSH host keys on first boot (kvstack lab)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""


def build_image(cfg: LabConfig) -> Path:
    """Build the node image with debootstrap, once; later calls reuse the cached tarball."""
    if cfg.image.is_file():
        return cfg.image
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cfg.cache_dir, prefix="build-") as tmp:
        root = Path(tmp) / "rootfs"
        progress(f"debootstrap {cfg.suite} node image (about a minute; cached in {cfg.image})")
        mirror = _debian_mirror()
        _run(
            ["debootstrap", "--variant=minbase", f"--include={IMAGE_PACKAGES}", cfg.suite, str(root), mirror]
        )
        _customise_image(root)
        progress("packing node image")
        part = cfg.image.with_suffix(".part")
        _run(["tar", "--zstd", "-C", str(root), "--numeric-owner", "-cpf", str(part), "."])
        part.rename(cfg.image)
    return cfg.image


def _debian_mirror() -> str:
    """The Debian mirror the host's apt uses (so the image comes from the same place)."""
    for f in _apt_files():
        for line in f.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("URIs:") and "debian" in line and "security" not in line:
                return line.split()[1]
            if line.startswith("deb ") and "debian" in line and "security" not in line:
                parts = [p for p in line.split()[1:] if not p.startswith("[")]
                return parts[0]
    return "http://deb.debian.org/debian"


def _customise_image(root: Path) -> None:
    """Make a debootstrap tree bootable as a lab node (shared by all nodes)."""
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    unit = root / "etc/systemd/system/kvstack-ssh-hostkeys.service"
    unit.write_text(FIRSTBOOT_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    _symlink(wants / unit.name, f"/etc/systemd/system/{unit.name}")
    # networkd brings host0 up with the address written per node.
    _symlink(wants / "systemd-networkd.service", "/lib/systemd/system/systemd-networkd.service")
    # Quiet, small nodes: no apt timers, no getty on the console.
    for masked in (
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "console-getty.service",
        "getty@tty1.service",
        "systemd-timesyncd.service",
    ):
        _symlink(root / "etc/systemd/system" / masked, "/dev/null")
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    if dbus_id.exists() or dbus_id.is_symlink():
        dbus_id.unlink()
    _symlink(dbus_id, "/etc/machine-id")
    sshd = root / "etc/ssh/sshd_config.d/kvstack-lab.conf"
    sshd.write_text("PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n")


def _symlink(link: Path, target: str) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def _personalise_node(cfg: LabConfig, name: str, addr: str, pubkey: str) -> None:
    """Write what makes one node itself: hostname, machine-id, address, keys, host's apt/pip."""
    root = cfg.node_dir(name)
    (root / "etc/hostname").write_text(f"{name}\n")
    (root / "etc/hosts").write_text(
        f"127.0.0.1 localhost\n127.0.1.1 {name}\n" + "".join(f"{a} {n}\n" for n, a in cfg.nodes.items())
    )
    (root / "etc/machine-id").write_text(_run(["systemd-id128", "new"]).stdout.strip() + "\n")
    prefix = cfg.network.prefixlen
    net = root / "etc/systemd/network/10-kvstack-lab.network"
    net.write_text(
        "[Match]\nName=host0\n\n[Network]\n"
        f"Address={addr}/{prefix}\nGateway={cfg.gateway}\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    )
    sync_host_config(cfg, name, pubkey)


def sync_host_config(cfg: LabConfig, name: str, pubkey: str) -> None:
    """Give the node the host's resolver, apt and pip setup and the lab's SSH key (every boot)."""
    root = cfg.node_dir(name)
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink():
        resolv.unlink()
    shutil.copyfile("/etc/resolv.conf", resolv)
    ssh = root / "root/.ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh / "authorized_keys").write_text(pubkey)
    os.chmod(ssh / "authorized_keys", 0o600)
    # apt and pip exactly as the host uses them.
    if not Path("/etc/apt/sources.list").is_file() or not Path("/etc/apt/sources.list").stat().st_size:
        (root / "etc/apt/sources.list").write_text("")  # the host uses sources.list.d only
    for f in _apt_files():
        dest = root / f.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
    pip_files, _ = _host_pip_config()
    for f in pip_files:
        dest = root / f.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if ca.is_file():
        (root / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca, root / "etc/ssl/certs/ca-certificates.crt")
    env_lines = [
        f"{k}={os.environ[k]}"
        for k in ("PIP_FIND_LINKS", "PIP_DEFAULT_TIMEOUT", "PIP_CERT")
        if os.environ.get(k)
    ]
    if env_lines:
        (root / "etc/environment").write_text("\n".join(env_lines) + "\n")


# --------------------------------------------------------------------------- host network


def _host_state(cfg: LabConfig) -> dict:
    try:
        return json.loads(cfg.host_state.read_text())
    except (OSError, ValueError):
        return {}


def _save_host_state(cfg: LabConfig, state: dict) -> None:
    cfg.host_state.parent.mkdir(parents=True, exist_ok=True)
    cfg.host_state.write_text(json.dumps(state, indent=1))


def _host_rules(cfg: LabConfig) -> list[tuple[str, list[str]]]:
    """The host's iptables rules for the lab, as (table, rule): NAT for the node subnet, forwarding
    to and from the bridge, and TCP MSS clamped to the path MTU on connections the nodes open (the
    nodes' links are 1500 bytes; an uplink with a smaller MTU, 1400 on some hosts, otherwise stalls
    every download once the first full-size segment comes back)."""
    tag = ["-m", "comment", "--comment", "kvstack-lab"]
    return [
        ("nat", ["POSTROUTING", "-s", str(cfg.network), "!", "-o", cfg.bridge, "-j", "MASQUERADE", *tag]),
        ("filter", ["FORWARD", "-i", cfg.bridge, "-j", "ACCEPT", *tag]),
        ("filter", ["FORWARD", "-o", cfg.bridge, "-j", "ACCEPT", *tag]),
        (
            "mangle",
            [
                "FORWARD",
                "-i",
                cfg.bridge,
                "-p",
                "tcp",
                "--tcp-flags",
                "SYN,RST",
                "SYN",
                "-j",
                "TCPMSS",
                "--clamp-mss-to-pmtu",
                *tag,
            ],
        ),
    ]


def _iptables_has(table: str, rule: list[str]) -> bool:
    return _run(["iptables", "-t", table, "-C", *rule], check=False).returncode == 0


def network_up(cfg: LabConfig) -> None:
    """Create the bridge, enable forwarding and NAT; record what was changed."""
    state = _host_state(cfg)
    if _run(["ip", "link", "show", cfg.bridge], check=False).returncode != 0:
        mtu = _default_route_mtu()
        _run(["ip", "link", "add", cfg.bridge, "type", "bridge"])
        _run(["ip", "link", "set", cfg.bridge, "mtu", str(mtu)])
        _run(["ip", "addr", "add", cfg.bridge_cidr, "dev", cfg.bridge])
        state["bridge_created"] = True
    _run(["ip", "link", "set", cfg.bridge, "up"])
    fwd = Path("/proc/sys/net/ipv4/ip_forward")
    if fwd.read_text().strip() != "1":
        state.setdefault("ip_forward_before", fwd.read_text().strip())
        fwd.write_text("1\n")
    for table, rule in _host_rules(cfg):
        if not _iptables_has(table, rule):
            _run(["iptables", "-t", table, "-A", *rule])
    _save_host_state(cfg, state)


def _default_route_mtu() -> int:
    out = _run(["ip", "-o", "route", "show", "default"], check=False).stdout.split()
    dev = out[out.index("dev") + 1] if "dev" in out else None
    if dev:
        with contextlib.suppress(OSError, ValueError):
            return int(Path(f"/sys/class/net/{dev}/mtu").read_text())
    return 1500


def network_down(cfg: LabConfig) -> list[str]:
    """Remove the bridge and the host rules (NAT, forwarding, MSS clamp); restore ip_forward.
    Returns what was removed."""
    removed = []
    state = _host_state(cfg)
    for table, rule in _host_rules(cfg):
        while _iptables_has(table, rule):
            _run(["iptables", "-t", table, "-D", *rule])
            removed.append(f"{table} rule")
    if _run(["ip", "link", "show", cfg.bridge], check=False).returncode == 0:
        _run(["ip", "link", "del", cfg.bridge])
        removed.append(f"bridge {cfg.bridge}")
    if "ip_forward_before" in state:
        Path("/proc/sys/net/ipv4/ip_forward").write_text(state["ip_forward_before"] + "\n")
    with contextlib.suppress(FileNotFoundError):
        cfg.host_state.unlink()
    return removed


# --------------------------------------------------------------------------- cgroups


def _cgroup_mounts() -> dict[str, Path]:
    """Map each cgroup hierarchy (by its /proc/self/cgroup controller list) to its mount point."""
    mounts: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fstype, _src, opts = ([*post.split(), "", "", ""])[:3]
        mnt = Path(pre.split()[4])
        if fstype == "cgroup2":
            mounts[""] = mnt
        elif fstype == "cgroup":
            ctrls = [
                o for o in opts.split(",") if o not in ("rw", "ro", "relatime", "nosuid", "nodev", "noexec")
            ]
            mounts[",".join(sorted(ctrls))] = mnt
    return mounts


def cgroup_dirs(name: str, pid: int | str = "self") -> list[Path]:
    """The lab cgroup directories for node *name*, one per hierarchy of process *pid*."""
    mounts = _cgroup_mounts()
    out = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _hid, ctrls, path = line.split(":", 2)
        key = ",".join(sorted(ctrls.split(","))) if ctrls else ""
        mnt = mounts.get(key)
        if mnt is None:
            continue
        cur = Path(path)
        base = cur.parent if cur.name == f"kvstack-{name}" else cur
        out.append(mnt / str(base).lstrip("/") / f"kvstack-{name}")
    return out


def _enter_own_cgroups(name: str) -> list[Path]:
    """Put this process into cgroup ``kvstack-<name>`` in every hierarchy (facts.md §1)."""
    made = []
    for d in cgroup_dirs(name):
        try:
            d.mkdir(exist_ok=True)
            if d.parent.name != "" and (d / "cpuset.cpus").exists():
                for f in ("cpuset.cpus", "cpuset.mems"):
                    if not (d / f).read_text().strip():
                        (d / f).write_text((d.parent / f).read_text())
            procs = d / "cgroup.procs"
            procs.write_text(f"{os.getpid()}\n")
            made.append(d)
        except OSError as exc:
            print(f"lab: cgroup {d}: {exc}", file=sys.stderr, flush=True)
    return made


def _remove_cgroups(dirs: list[Path]) -> list[Path]:
    removed = []
    for d in dirs:
        if not d.is_dir():
            continue
        # Child groups first (systemd in the node makes its own below ours).
        for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                sub.rmdir()
        try:
            d.rmdir()
            removed.append(d)
        except OSError:
            pass
    return removed


# --------------------------------------------------------------------------- nodes


def _nspawn_cmd(cfg: LabConfig, name: str) -> list[str]:
    _, pip_dirs = _host_pip_config()
    binds = [f"--bind-ro={d}" for d in pip_dirs]
    return [
        "systemd-nspawn",
        "-D",
        str(cfg.node_dir(name)),
        "-M",
        name,
        "-b",
        "--register=no",
        "--keep-unit",
        f"--network-bridge={cfg.bridge}",
        "--resolv-conf=off",
        "--timezone=off",
        "--console=read-only",
        *binds,
    ]


def supervise(name: str, inventory_dir: str | None = None) -> int:
    """Run one node: own cgroups, then nspawn, booted again after a guest reboot (rc 133).

    This is the process ``lab-up`` starts per node (detached); SIGTERM shuts the node down.
    """
    cfg = load_config(Path(inventory_dir) if inventory_dir else None)
    _enter_own_cgroups(name)
    child: subprocess.Popen | None = None
    stopping = False

    def _stop(signum, _frame):
        nonlocal stopping
        stopping = True
        if child and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # nspawn powers the guest off cleanly

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while True:
        print(f"lab: booting {name}", flush=True)
        child = subprocess.Popen(_nspawn_cmd(cfg, name), stdin=subprocess.DEVNULL)
        rc = child.wait()
        print(f"lab: {name} nspawn exited {rc}", flush=True)
        if stopping or rc != NSPAWN_REBOOT_RC:
            return rc
        time.sleep(0.5)


def _ensure_ssh_key(cfg: LabConfig) -> str:
    key = cfg.ssh_key
    if not key.is_file():
        key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kvstack-lab", "-f", str(key)])
    os.chmod(key, 0o600)
    return Path(f"{key}.pub").read_text()


def _create_node(cfg: LabConfig, name: str, addr: str, pubkey: str) -> None:
    root = cfg.node_dir(name)
    tmp = root.with_name(f".{name}.new")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    _run(["tar", "--zstd", "-C", str(tmp), "--numeric-owner", "-xpf", str(cfg.image)])
    tmp.rename(root)
    _personalise_node(cfg, name, addr, pubkey)


def _wait_ssh(addr: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((addr, 22), timeout=1) as s:
                s.settimeout(2)
                if s.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def node_pid(cfg: LabConfig, name: str) -> int | None:
    """PID of the node's supervisor, or None when it is not running."""
    return _read_pid(cfg.pid_file(name))


def _wait_exit(pid: int | None, deadline: float) -> bool:
    """Wait until process *pid* is gone (True) or *deadline* (monotonic) passed (False)."""
    while pid and _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not (pid and _pid_alive(pid))


def wait_node_off(cfg: LabConfig, name: str, timeout_s: float) -> bool:
    """Wait until node *name* is off (its supervisor exited, e.g. after a poweroff inside it, which
    lab-up would otherwise take for a running node); False when it still runs after *timeout_s*."""
    return _wait_exit(node_pid(cfg, name), time.monotonic() + timeout_s)


def up(inventory_dir: Path | None = None, timeout: float = 120.0) -> LabConfig:
    """Bring every lab node up (idempotent) and wait until each answers on SSH."""
    check_host()
    cfg = load_config(inventory_dir)
    build_image(cfg)
    pubkey = _ensure_ssh_key(cfg)
    network_up(cfg)
    for d in ("nodes", "run", "logs"):
        (cfg.state_dir / d).mkdir(parents=True, exist_ok=True)
    started = []
    for name, addr in cfg.nodes.items():
        if node_pid(cfg, name):
            progress(f"{name} ({addr}) already running")
            continue
        if not cfg.node_dir(name).is_dir():
            progress(f"creating node {name} ({addr})")
            _create_node(cfg, name, addr, pubkey)
        else:
            sync_host_config(cfg, name, pubkey)
        log = cfg.log_file(name).open("ab")
        cmd = [sys.executable, "-m", "kvstack.lab", "supervise", name]
        if inventory_dir:
            cmd.append(str(inventory_dir))
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        )
        cfg.pid_file(name).write_text(f"{proc.pid}\n")
        started.append(name)
        progress(f"booting {name} ({addr}), pid {proc.pid}, log {cfg.log_file(name)}")
    deadline = time.monotonic() + timeout
    for name, addr in cfg.nodes.items():
        if not _wait_ssh(addr, deadline):
            raise LabError(
                f"{name} ({addr}) did not answer on SSH within {timeout:.0f}s; see {cfg.log_file(name)}"
            )
    progress(f"lab up: {len(cfg.nodes)} nodes ({', '.join(cfg.nodes)}), {len(started)} started now")
    return cfg


def running(cfg: LabConfig) -> list[str]:
    """Every node whose supervisor runs, listed in this inventory or not (another lab inventory,
    such as inventory/lab-cluster, shares the state directory and the bridge)."""
    return sorted(p.stem for p in (cfg.state_dir / "run").glob("*.pid") if node_pid(cfg, p.stem))


def down(inventory_dir: Path | None = None, timeout: float = 60.0) -> list[str]:
    """Stop every lab node (by PID; also those another lab inventory started, since the bridge
    goes) and remove what the lab made on the host."""
    check_host()
    cfg = load_config(inventory_dir)
    removed = stop_nodes(cfg, sorted(set(cfg.nodes) | set(running(cfg))), timeout)
    removed += network_down(cfg)
    progress("lab down" + (": removed " + ", ".join(removed) if removed else ": nothing was running"))
    return removed


def stop_nodes(cfg: LabConfig, names: list[str], timeout: float = 60.0) -> list[str]:
    """Stop the nodes *names* (the rest of the lab and the bridge stay); what was removed."""
    removed: list[str] = []
    pids = {name: node_pid(cfg, name) for name in names}
    for name, pid in pids.items():
        if pid:
            progress(f"stopping {name} (pid {pid})")
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for name, pid in pids.items():
        stopped = _wait_exit(pid, deadline)
        cgroups = _lab_cgroups(name)
        if not stopped:
            progress(f"{name}: no clean shutdown in {timeout:.0f}s, killing")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        _kill_cgroup_members(cgroups)
        removed += [f"cgroup {d}" for d in _remove_cgroups(cgroups)]
        # A killed nspawn leaves its host-side veth behind (vb-NAME, cut to 15 characters).
        veth = f"vb-{name}"[:15]
        if _run(["ip", "link", "show", veth], check=False).returncode == 0:
            _run(["ip", "link", "del", veth], check=False)
            removed.append(f"link {veth}")
        with contextlib.suppress(FileNotFoundError):
            cfg.pid_file(name).unlink()
        if pid:
            removed.append(f"node {name} (pid {pid})")
    return removed


def _lab_cgroups(name: str) -> list[Path]:
    """Every ``kvstack-<name>`` directory in the host's cgroup hierarchies."""
    out = []
    for mnt in set(_cgroup_mounts().values()):
        out += [p for p in _walk_named(mnt, f"kvstack-{name}")]
    return out


def _walk_named(top: Path, dirname: str, depth: int = 3) -> Iterator[Path]:
    if depth < 0:
        return
    with contextlib.suppress(OSError):
        for p in top.iterdir():
            if p.is_dir():
                if p.name == dirname:
                    yield p
                elif not p.name.startswith(("kvstack-", "system.slice", "user.slice", "init.scope")):
                    yield from _walk_named(p, dirname, depth - 1)


def _kill_cgroup_members(dirs: list[Path]) -> None:
    for d in dirs:
        for procs in d.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                for line in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(line), signal.SIGKILL)
    if dirs:
        time.sleep(0.3)


def destroy(inventory_dir: Path | None = None) -> None:
    """Stop the lab and delete the nodes' root filesystems (the image cache is kept)."""
    cfg = load_config(inventory_dir)
    down(inventory_dir)
    for name in cfg.nodes:
        if cfg.node_dir(name).exists():
            progress(f"deleting node {name}")
            shutil.rmtree(cfg.node_dir(name))


def status(inventory_dir: Path | None = None) -> dict[str, dict]:
    """Per node: supervisor pid (or None), address, SSH reachable."""
    cfg = load_config(inventory_dir)
    out = {}
    for name, addr in cfg.nodes.items():
        pid = node_pid(cfg, name)
        out[name] = {
            "address": addr,
            "pid": pid,
            "created": cfg.node_dir(name).is_dir(),
            "ssh": bool(pid) and _wait_ssh(addr, time.monotonic() + 1.0),
        }
    return out


def leftovers(inventory_dir: Path | None = None) -> list[str]:
    """What of the lab is still on the host: node processes, bridge, veths, NAT rules, cgroups."""
    cfg = load_config(inventory_dir)
    found = []
    for name in cfg.nodes:
        found += [f"cgroup {d}" for d in _lab_cgroups(name)]
        if node_pid(cfg, name):
            found.append(f"node {name}")
    ps = _run(["ps", "-eo", "pid,args"], check=False).stdout
    found += [
        f"process {line.strip()}"
        for line in ps.splitlines()
        if "systemd-nspawn" in line and str(cfg.state_dir) in line
    ]
    links = _run(["ip", "-o", "link", "show"], check=False).stdout
    found += [
        f"link {line.split(':')[1].strip()}"
        for line in links.splitlines()
        if f" {cfg.bridge}:" in line or f"master {cfg.bridge}" in line or ": vb-" in line
    ]
    found += [f"{table} rule" for table, rule in _host_rules(cfg) if _iptables_has(table, rule)]
    return found


def main(argv: list[str] | None = None) -> int:
    """``python -m kvstack.lab supervise NAME [INVENTORY]`` (used by :func:`up`)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) >= 2 and args[0] == "supervise":
        return supervise(args[1], args[2] if len(args) > 2 else None)
    print("usage: python -m kvstack.lab supervise NAME [INVENTORY_DIR]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
