"""Fabric tasks: `fab --list`. Thin wrappers; the work is in scripts/kvstack."""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import task

# The controller package and the node tools it imports (roles/node_tools/files/kvstack_node).
sys.path.insert(0, str(Path(__file__).parent / "roles" / "node_tools" / "files"))
sys.path.insert(0, str(Path(__file__).parent / "scripts"))

from kvstack import lab as _lab
from kvstack import provision as _provision
from kvstack.bench import options as _bench_options


def _inv(inventory: str | None) -> Path | None:
    return Path(inventory) if inventory else None


@task(help={"inventory": "lab inventory directory (default inventory/lab)"})
def lab_up(c, inventory=None):
    """Boot the lab's nodes (systemd-nspawn) on the lab bridge; harmless when already up."""
    _lab.up(_inv(inventory))


@task(help={"inventory": "lab inventory directory (default inventory/lab)"})
def lab_down(c, inventory=None):
    """Stop every lab node by PID; remove the bridge, NAT rule and cgroups the lab made."""
    _lab.down(_inv(inventory))


@task(help={"inventory": "lab inventory directory (default inventory/lab)"})
def lab_destroy(c, inventory=None):
    """lab-down, then delete the nodes' root filesystems (the cached image stays)."""
    _lab.destroy(_inv(inventory))


@task(help={"inventory": "lab inventory directory (default inventory/lab)"})
def lab_status(c, inventory=None):
    """Show each lab node: running, pid, address, SSH reachable; and leftovers on the host."""
    for name, st in _lab.status(_inv(inventory)).items():
        state = "up" if st["pid"] else ("stopped" if st["created"] else "not created")
        ssh = "yes" if st["ssh"] else "no"
        print(f"{name:14} {st['address']:15} {state:12} pid={st['pid'] or '-':<8} ssh={ssh}")
    running = any(st["pid"] for st in _lab.status(_inv(inventory)).values())
    if not running:
        left = _lab.leftovers(_inv(inventory))
        print("leftovers on the host: " + (", ".join(left) if left else "none"))


@task(
    help={
        "inventory": "inventory directory (default: ansible.cfg's, inventory/lab)",
        "check": "dry run (--check --diff)",
        "limit": "limit to hosts/groups",
        "tags": "only these tags",
    }
)
def provision(c, inventory=None, check=False, limit=None, tags=None):
    """Run `ansible-playbook site.yml` against the inventory."""
    _provision.playbook("site.yml", inventory=inventory, check=check, diff=check, limit=limit, tags=tags)


@task(help={"inventory": "lab inventory directory (default inventory/lab)"})
def lab(c, inventory=None):
    """The main job on the lab: lab-up, then provision with site.yml."""
    _lab.up(_inv(inventory))
    _provision.playbook("site.yml", inventory=inventory)


def _run_bench(values: dict) -> None:
    """Benchmark the tier profiles on the serving nodes; writes results/<run>/report.md with plots."""
    from kvstack import bench as _bench

    try:
        out = _bench.run_bench(_bench_options.from_cli(values))
    except (_bench.BenchError, _bench.StackError, ValueError) as e:
        raise SystemExit(f"run-bench: {e}") from None
    print(f"report: {out / 'report.md'}")


# Every option of kvstack.bench.BenchOptions, with its help text, declared there once.
# No short flags: they would change as options are added.
run_bench = task(
    iterable=_bench_options.iterable_args(), help=_bench_options.task_help(), auto_shortflags=False
)(_bench_options.fab_task(_run_bench))


@task(
    help={
        "inventory": "inventory directory (default inventory/lab): Prometheus is its first monitoring host",
        "prometheus": "Prometheus' URL instead (like http://10.77.0.21:9090)",
        "watch": "redraw every this many seconds (0: once)",
        "json": "print the reading as JSON",
    }
)
def status(c, inventory=None, prometheus=None, watch=0, json=False):
    """Live view from Prometheus: per node engine up, req/s, TTFT P95, hit rate by tier, KV use; alerts."""
    from kvstack import inventory as _inventory
    from kvstack import status as _status

    try:
        url = prometheus or _status.prometheus_url(inventory or _inventory.LAB_INVENTORY)
        _status.run(url, watch_s=float(watch), as_json=json)
    except (_status.StatusError, _inventory.InventoryError) as e:
        raise SystemExit(f"status: {e}") from None
