"""Fabric tasks: `fab --list`. Thin wrappers; the work is in scripts/kvstack."""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import task

sys.path.insert(0, str(Path(__file__).parent / "scripts"))

from kvstack import lab as _lab
from kvstack import provision as _provision


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


def _csv(value: str | None, cast=str) -> tuple | None:
    if value is None:
        return None
    try:
        return tuple(cast(x.strip()) for x in str(value).split(",") if x.strip())
    except ValueError as e:
        raise SystemExit(f"bad list {value!r}: {e}") from None


@task(
    iterable=["set_"],
    help={
        "set_": "NAME=VALUE: an Ansible variable for every profile switch (tuning), repeatable",
        "inventory": "inventory directory (default: ansible.cfg's, inventory/lab)",
        "size": "smoke (minutes, default) or full",
        "profiles": "tier profiles, comma-separated (default none,dram,kv,dram+kv)",
        "loads": "load levels: cN = N closed-loop users taking turns, qX = X conversations/s (smoke: c4)",
        "workload": "multi-round-qa (default), long-doc-qa or shared-prefix",
        "kv_ratio": "working set / vLLM's KV space (smoke 4, full 6)",
        "users": "conversations (default: as many as kv-ratio needs)",
        "rounds": "turns per conversation",
        "history_tokens": "multi-round QA: each user's own context before the first question",
        "chunk_sizes": "LMCache chunk sizes (tokens, comma-separated) as a matrix dimension",
        "repeats": "passes over the matrix, each in its own shuffled order (default 1)",
        "seed": "seed of workloads and order (default 0)",
        "node": "serving node to measure (default: the first of group serving)",
        "probe": "TTFT probe of a 4k-token context (default on; --no-probe)",
        "datapath": "KV data-path bench (default on; --no-datapath)",
        "datapath_sizes": "value sizes in bytes, comma-separated (smoke: 256 KiB, 1 MiB, 4 MiB)",
        "rocksdb": "RocksDB engine bench with the Kvrocks profiles (default on; --no-rocksdb)",
        "routing": "routing bench: 1 vs 2 nodes, round-robin vs cache-aware via the router (default on)",
        "routing_load": "closed-loop users of the routing runs (smoke c4, full c8)",
        "routing_kv_ratio": "routing runs' working set / one node's vLLM KV space (default 1.5)",
        "dynamo": "Dynamo bench: frontend + KV router, with/without LMCache, 1 vs 2 workers (default off)",
        "matrix": "the tier-profile matrix (default on; --no-matrix runs only the other steps)",
        "max_seconds": "cap on each load run's duration",
        "slo_ttft_ms": "goodput SLO: time to first token, ms (default 2000)",
        "slo_itl_ms": "goodput SLO: mean inter-token latency, ms (default 200)",
        "rocksdb_dir": "directory on the disk the RocksDB bench measures (default /var/tmp)",
        "results": "results root (default results/)",
    },
)
def run_bench(
    c,
    inventory=None,
    size="smoke",
    profiles=None,
    loads=None,
    workload="multi-round-qa",
    kv_ratio=None,
    users=None,
    rounds=None,
    history_tokens=None,
    chunk_sizes=None,
    repeats=1,
    seed=0,
    node=None,
    probe=True,
    datapath=True,
    datapath_sizes=None,
    rocksdb=True,
    routing=True,
    routing_load=None,
    routing_kv_ratio=None,
    dynamo=False,
    matrix=True,
    max_seconds=None,
    slo_ttft_ms=2000.0,
    slo_itl_ms=200.0,
    rocksdb_dir="/var/tmp",
    results=None,
    set_=None,
):
    """Benchmark the tier profiles on the serving nodes; writes results/<run>/report.md with plots."""
    from kvstack import bench as _bench

    extra = {}
    for item in set_ or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"run-bench: --set {item!r}: expected NAME=VALUE")
        extra[name.strip()] = value
    try:
        opts = _bench.BenchOptions(
            extra_vars=extra,
            inventory=_inv(inventory),
            size=size,
            profiles=_csv(profiles) or _bench.PROFILES,
            loads=_csv(loads),
            workload=workload,
            kv_ratio=float(kv_ratio) if kv_ratio is not None else None,
            users=int(users) if users is not None else None,
            rounds=int(rounds) if rounds is not None else None,
            history_tokens=int(history_tokens) if history_tokens is not None else None,
            chunk_sizes=_csv(chunk_sizes, int) or (),
            repeats=int(repeats),
            seed=int(seed),
            node=node,
            probe=probe,
            datapath=datapath,
            datapath_sizes=_csv(datapath_sizes, int),
            rocksdb=rocksdb,
            routing=routing,
            routing_load=routing_load,
            routing_kv_ratio=float(routing_kv_ratio) if routing_kv_ratio is not None else None,
            dynamo=dynamo,
            matrix=matrix,
            max_seconds=float(max_seconds) if max_seconds is not None else None,
            slo_ttft_ms=float(slo_ttft_ms),
            slo_itl_ms=float(slo_itl_ms),
            rocksdb_dir=Path(rocksdb_dir),
            **({"results_dir": Path(results)} if results else {}),
        )
        out = _bench.run_bench(opts)
    except (_bench.BenchError, _bench.StackError, ValueError) as e:
        raise SystemExit(f"run-bench: {e}") from None
    print(f"report: {out / 'report.md'}")
