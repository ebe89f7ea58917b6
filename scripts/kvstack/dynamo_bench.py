"""Dynamo bench: the multi-round workload through NVIDIA Dynamo's frontend (its KV router), with
and without LMCache attached to the workers, on one and on two workers.

Each configuration is applied through ``site.yml --tags dynamo,firewall`` (the provisioning code
path: ``dynamo_enabled`` on, ``dynamo_worker_lmcache`` per configuration, the worker stopped on
the nodes a configuration leaves out), then the frontend is polled until it lists exactly that
many workers, and a fresh multi-round QA run (its own text, nothing any cache has seen) is sent
to the frontend's URL while every worker's metrics (vLLM's own counters, served by Dynamo's
status server), the LMCache servers and the KV server are read before and after. At the end the
Dynamo nodes go back to what the inventory says (off, unless ``dynamo_enabled`` is set there).
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from kvstack import measure, provision, stack
from kvstack import metrics as m
from kvstack.loadgen import LoadConfig
from kvstack.log import progress
from kvstack.results_schema import Dynamo, DynamoRun, NodeStats
from kvstack.routing import log_run
from kvstack.stack import Endpoints, StackError, fetch_endpoints, lmcache_source
from kvstack.stats import SLO
from kvstack.waits import wait_until

#: Configurations in run order (each differs from the one before by one worker's restart):
#: label -> (number of workers, LMCache attached).
CONFIGS: dict[str, tuple[int, bool]] = {
    "dynamo+lmcache 2 workers": (2, True),
    "dynamo+lmcache 1 worker": (1, True),
    "dynamo 1 worker": (1, False),
    "dynamo 2 workers": (2, False),
}
TAGS = "dynamo,firewall"


def require(ep: Endpoints) -> list[str]:
    """The inventory's Dynamo worker hosts; a clear error, before anything changes, when it has no
    frontend or no worker."""
    workers = list(ep.dynamo.get("workers") or {})
    if not ep.dynamo.get("frontend") or not workers:
        raise StackError(
            "the Dynamo bench needs a host in group dynamo_frontend and one or more in dynamo_worker "
            "(see inventory/lab/hosts.yml)"
        )
    return workers


def frontend_of(ep: Endpoints) -> tuple[str, dict[str, Any]]:
    """The inventory's (first) Dynamo frontend as (host, endpoint); a clear error when none."""
    if not ep.dynamo.get("frontend"):
        raise StackError("the inventory has no host in group dynamo_frontend: the Dynamo bench needs one")
    host, info = next(iter(ep.dynamo["frontend"].items()))
    if not info.get("url"):
        raise StackError(f"{host}: the Dynamo frontend is off (dynamo_enabled false)")
    return host, info


def apply(inventory: Path | None, workers: list[str], on: list[str], lmcache: bool, log: Path) -> float:
    """Dynamo on, the worker on *on* (LMCache attached per *lmcache*) and off on the other
    *workers*; returns seconds."""
    t0 = time.monotonic()
    off = [w for w in workers if w not in on]
    progress(
        f"dynamo: workers on {', '.join(on)}, LMCache {'on' if lmcache else 'off'} (site.yml --tags {TAGS})"
    )
    base: dict[str, Any] = {"dynamo_enabled": True, "dynamo_worker_lmcache": lmcache}
    # Control plane, frontend and the workers that run; then the workers that do not.
    runs = [(None if not off else f"all:!{','.join(off)}", base)]
    if off:
        runs.append((",".join(off), {**base, "dynamo_worker_enabled": False}))
    for limit, extra in runs:
        heading = f"dynamo {extra}" + (f" on {limit}" if limit else "")
        provision.apply(log, heading, inventory=inventory, limit=limit, tags=TAGS, extra_vars=extra)
    return time.monotonic() - t0


def restore(inventory: Path | None, log: Path) -> None:
    """Dynamo back to what the inventory says (off unless its dynamo_enabled is true)."""
    try:
        provision.apply(log, "dynamo back to the inventory's settings", inventory=inventory, tags=TAGS)
    except RuntimeError as e:
        progress(f"could not restore Dynamo ({e}); run: fab provision --tags {TAGS}")


def frontend_workers(url: str) -> int:
    """Worker instances the frontend's ``/health`` lists (``instances``; 0 when it does not answer)."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            doc = json.loads(r.read())
    except (OSError, ValueError):
        return 0
    instances = doc.get("instances") or []
    return len({(i.get("instance_id"), i.get("endpoint")) for i in instances if _generate(i)})


def _generate(instance: dict[str, Any]) -> bool:
    """An instance of a worker's generate endpoint (the frontend also lists other endpoints)."""
    return "generate" in str(instance.get("endpoint", "generate"))


def wait_workers(url: str, n: int, model: str, timeout_s: float = 600) -> None:
    """Wait until the frontend lists exactly *n* workers and answers a completion for *model*."""
    seen = [0]

    def ready() -> bool:
        seen[0] = frontend_workers(url)
        return seen[0] == n and _completes(url, model)

    wait_until(
        ready,
        timeout_s,
        3,
        lambda: f"Dynamo frontend {url}: {seen[0]} of {n} workers after {timeout_s:.0f} s",
    )


def _completes(url: str, model: str) -> bool:
    """Whether the frontend answers one completion for *model*."""
    try:
        stack.complete(url, model, "ready?", max_tokens=1)
        return True
    except (OSError, ValueError, KeyError, IndexError):
        return False


def per_worker(deltas: dict[str, dict[str, float]], nodes: list[str]) -> dict[str, NodeStats]:
    """Per worker node: requests it finished and where its prompt tokens came from (vLLM's
    ``prompt_tokens_by_source``: its own prefix cache, LMCache, or computed)."""
    out: dict[str, NodeStats] = {}
    for node in nodes:
        d = deltas.get(f"dynamo@{node}", {})
        out[node] = {"requests": int(m.total(d, "vllm:request_success_total")), **m.prompt_sources(d)}
    return out


def sources_for(ep: Endpoints, nodes: list[str], lmcache: bool) -> list[m.Source]:
    """Each worker's metrics (vLLM's counters) and, with *lmcache*, its node's LMCache server."""
    out = []
    for node in nodes:
        url = ep.dynamo["workers"][node]["metrics_url"]
        out.append(m.Source(f"dynamo@{node}", "vllm", lambda u=url: m.scrape(u, ("vllm:", "dynamo_"))))
        if lmcache:
            out.append(lmcache_source(ep, node))
    return out


def run_config(
    label: str,
    passes: list[list],
    lc: LoadConfig,
    ep: Endpoints,
    nodes: list[str],
    out_dir: Path,
    slo: SLO,
) -> DynamoRun:
    """One measured run through the frontend; returns its entry for results.json."""
    n, lmcache = CONFIGS[label]
    sources = sources_for(ep, nodes, lmcache)
    run = measure.config_run("dynamo", label, passes, lc, sources, out_dir, slo)
    workers = per_worker(run.deltas, nodes)
    log_run("dynamo", label, run.summary, workers)
    lm_hits = sum(
        m.total(run.deltas.get(f"lmcache@{node}", {}), "lmcache_mp_lookup_hit_tokens_total") for node in nodes
    )
    return {
        "config": label,
        "workers": n,
        "worker_hosts": nodes,
        "lmcache": lmcache,
        "file": run.file,
        "summary": run.summary,
        "per_worker": workers,
        "lmcache_hit_tokens": int(lm_hits),
        "counter_errors": run.errors,
    }


def comparisons(runs: list[DynamoRun]) -> dict[str, float | None]:
    """Ratios measured in this run: LMCache attached vs not (same workers), two workers vs one."""
    by = {r["config"]: r["summary"] for r in runs}

    def ratio(a: str, b: str, key: str) -> float | None:
        if a not in by or b not in by:
            return None
        x, y = _metric(by[a], key), _metric(by[b], key)
        return x / y if x and y else None

    out: dict[str, float | None] = {}
    for n in ("1 worker", "2 workers"):
        out[f"lmcache TTFT P50 speed-up ({n})"] = ratio(f"dynamo {n}", f"dynamo+lmcache {n}", "ttft.p50")
        out[f"lmcache TTFT P95 speed-up ({n})"] = ratio(f"dynamo {n}", f"dynamo+lmcache {n}", "ttft.p95")
        out[f"lmcache tokens/s gain ({n})"] = ratio(f"dynamo+lmcache {n}", f"dynamo {n}", "tps")
    for kind in ("dynamo", "dynamo+lmcache"):
        out[f"2 vs 1 worker tokens/s ({kind})"] = ratio(f"{kind} 2 workers", f"{kind} 1 worker", "tps")
    return out


def _metric(summary: dict[str, Any], key: str) -> float | None:
    if key == "tps":
        return summary.get("total_tokens_per_s")
    group, q = key.split(".")
    return (summary.get(group) or {}).get(q)


def run_dynamo(
    inventory: Path | None,
    ep: Endpoints,
    conversations_for,
    lc_for,
    out_dir: Path,
    log: Path,
    slo: SLO,
    save,
) -> Dynamo:
    """Every configuration of :data:`CONFIGS` the inventory allows, in order, then Dynamo back to
    the inventory's settings.

    *conversations_for(i)* gives run *i*'s fresh conversation sets (run one after another),
    *lc_for(url, model, i)* its load config; *save(result)* is called after each run (results
    survive an interruption).
    """
    workers = require(ep)
    # Addresses as the roles give them with Dynamo on (the inventory may have it off); they do
    # not change between configurations.
    ep_on = fetch_endpoints(inventory, {"dynamo_enabled": True})
    host, front = frontend_of(ep_on)
    result: Dynamo = {
        "frontend": front["url"],
        "router_mode": front["router_mode"],
        "frontend_host": host,
        "runs": [],
        "missing": [],
        "switch_s": [],
    }
    try:
        for i, (label, (n, lmcache)) in enumerate(CONFIGS.items()):
            if n > len(workers):
                result["missing"].append(f"dynamo {label}: the inventory has {len(workers)} worker node(s)")
                continue
            on = workers[:n]
            result["switch_s"].append(round(apply(inventory, workers, on, lmcache, log), 1))
            model = ep_on.dynamo["workers"][on[0]]["model"]
            wait_workers(front["url"], n, model)
            entry = run_config(
                label, conversations_for(i), lc_for(front["url"], model, i), ep_on, on, out_dir, slo
            )
            result["runs"].append(entry)
            result["comparisons"] = comparisons(result["runs"])
            save(result)
    finally:
        restore(inventory, log)
    return result
