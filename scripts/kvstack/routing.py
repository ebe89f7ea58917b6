"""Routing bench: the multi-round workload through the router, 1 node vs 2 nodes and
round-robin vs cache-aware, with per-node hit rates.

Each configuration is applied to the router through ``site.yml --tags router`` (policy and
backend hosts as extra variables), then a fresh multi-round QA run (its own text, nothing any
cache has seen) is sent to the router's URL while every serving node's vLLM, LMCache, the KV
server and the router itself are read before and after. Per node the report gets requests
(the router's own per-backend counter) and where prompt tokens came from (vLLM's
``prompt_tokens_by_source``: its own prefix cache, LMCache, or computed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvstack import measure, provision
from kvstack import metrics as m
from kvstack.loadgen import LoadConfig
from kvstack.log import progress
from kvstack.results_schema import NodeStats, Routing, RoutingRun, RoutingTarget
from kvstack.stack import Endpoints, StackError, metric_sources, reset_prefix_cache, wait_healthy
from kvstack.stats import SLO
from kvstack.waits import wait_until

#: Configurations in run order: label -> (number of backend nodes, policy).
CONFIGS: dict[str, tuple[int, str]] = {
    "1 node": (1, "round_robin"),
    "2 nodes round_robin": (2, "round_robin"),
    "2 nodes cache_aware": (2, "cache_aware"),
}
TARGET_P95_X = 1.5
ROUTER_COUNTER = "vllm_router_processed_requests_total"
HEALTH = "vllm_router_worker_health"


@dataclass(frozen=True)
class Router:
    """The router host and what ``roles/router`` says about it."""

    host: str
    url: str
    metrics_url: str
    backends: list[str]


def router_of(ep: Endpoints) -> Router:
    """The inventory's (first) router; a clear error when there is none."""
    if not ep.router:
        raise StackError("the inventory has no host in group router: the routing bench needs one")
    host, info = next(iter(ep.router.items()))
    return Router(host, info["url"], info["metrics_url"], list(info["backends"]))


def apply(inventory: Path | None, router: Router, nodes: list[str], policy: str, log: Path) -> float:
    """Point the router at *nodes* with *policy* (site.yml --tags router); returns seconds."""
    progress(f"router: {policy} over {', '.join(nodes)} (site.yml --tags router)")
    return provision.apply(
        log,
        f"router {policy} over {nodes}",
        inventory=inventory,
        limit=router.host,
        tags="router",
        extra_vars={"router_policy": policy, "router_backend_hosts": nodes},
    )


def healthy_backends(metrics_url: str) -> set[str]:
    """Backend URLs the router counts healthy now (``vllm_router_worker_health`` 1)."""
    snap = m.scrape(metrics_url, (HEALTH,))
    return {
        k.split('worker="', 1)[1].split('"', 1)[0]
        for k, v in snap.values.items()
        if k.startswith(HEALTH) and 'worker="' in k and v == 1
    }


def wait_backends(router: Router, n: int, timeout_s: float = 300) -> None:
    """Wait until the router reports *n* healthy backends."""
    seen = [0]

    def enough() -> bool:
        seen[0] = len(healthy_backends(router.metrics_url))
        return seen[0] >= n

    wait_until(
        enough,
        timeout_s,
        2,
        lambda: f"router {router.url}: {seen[0]} of {n} backends healthy after {timeout_s:.0f} s",
    )


def per_node(deltas: dict[str, dict[str, float]], nodes: dict[str, str]) -> dict[str, NodeStats]:
    """Per serving node: requests routed to it and where its prompt tokens came from.

    *nodes* maps node name to its vLLM URL (the router labels backends by URL)."""
    routed = deltas.get("router", {})
    out: dict[str, NodeStats] = {}
    for node, url in nodes.items():
        requests = sum(
            val for k, val in routed.items() if k.startswith(ROUTER_COUNTER) and f'worker="{url}"' in k
        )
        out[node] = {"requests": int(requests), **m.prompt_sources(deltas.get(f"vllm@{node}", {}))}
    return out


def log_run(kind: str, label: str, summary: dict[str, Any], per: dict[str, NodeStats]) -> None:
    """One progress line: throughput, TTFT P95, failures, and requests and hit rate per node."""
    p95 = summary["ttft"]["p95"]
    progress(
        f"{kind} {label}: {summary['total_tokens_per_s']:.0f} tok/s, TTFT P95 "
        f"{1000 * (p95 or 0):.0f} ms, failed {summary['failed']}; "
        + ", ".join(f"{n} {d['requests']} req hit {100 * (d['hit_rate'] or 0):.0f}%" for n, d in per.items())
    )


#: the label suffix of the configurations run with every serving node on profile none
NO_TIER = "vLLM cache only"


def labelled(config: str, tier: str) -> str:
    """A configuration's label in results.json: *config*, with the tier setup when not the
    inventory's (``2 nodes cache_aware, vLLM cache only``)."""
    return f"{config}, {tier}" if tier else config


def run_config(
    label: str,
    passes: list[list],
    lc: LoadConfig,
    ep: Endpoints,
    router: Router,
    nodes: list[str],
    out_dir: Path,
    slo: SLO,
    tier: str = "",
) -> RoutingRun:
    """One measured run of configuration *label* (of :data:`CONFIGS`) through the router, the
    serving nodes on the inventory's tier profile (*tier* ""), or on ``none`` (*tier*
    :data:`NO_TIER`, no LMCache to read); returns its entry for results.json."""
    vllms = {n: ep.vllm(n) for n in ep.serving}
    for v in vllms.values():
        wait_healthy(v)
        reset_prefix_cache(v)
    policy = CONFIGS[label][1]
    label = labelled(label, tier)
    sources, _ = metric_sources(ep, list(ep.serving), lmcache=not tier)
    sources.append(m.Source("router", "router", lambda: m.scrape(router.metrics_url, ("vllm_router_",))))
    run = measure.config_run("routing", label, passes, lc, sources, out_dir, slo)
    nodes_seen = per_node(run.deltas, {n: vllms[n]["url"] for n in ep.serving})
    log_run("routing", label, run.summary, nodes_seen)
    return {
        "config": label,
        "nodes": len(nodes),
        "backend_hosts": nodes,
        "policy": policy,
        "tier": tier or "inventory",
        "file": run.file,
        "summary": run.summary,
        "per_node": nodes_seen,
        "counter_errors": run.errors,
    }


def target(runs: list[RoutingRun], tier: str = "") -> RoutingTarget | None:
    """The figures of the target (cache-aware TTFT P95 >= 1.5x better than round-robin on 2 nodes,
    and a higher hit rate on every node): the point ratio and each node's comparison. Whether it is
    met needs the interval: :mod:`kvstack.bench.targets` and :func:`kvstack.intervals.verdict`."""
    by = {r["config"]: r for r in runs}
    rr, ca = by.get(labelled("2 nodes round_robin", tier)), by.get(labelled("2 nodes cache_aware", tier))
    if not rr or not ca:
        return None
    p_rr, p_ca = rr["summary"]["ttft"]["p95"], ca["summary"]["ttft"]["p95"]
    ratio = p_rr / p_ca if p_rr and p_ca else None
    higher = {
        n: (ca["per_node"][n]["hit_rate"] or 0) > (rr["per_node"].get(n, {}).get("hit_rate") or 0)
        for n in ca["per_node"]
    }
    return {
        "target": (
            f"2 nodes: TTFT P95 round-robin / cache-aware >= {TARGET_P95_X}x, "
            "and a higher hit rate on every node"
        ),
        "measured": ratio,
        "hit_rate_higher_on": higher,
    }


def restore(inventory: Path | None, router: Router, log: Path) -> None:
    """Put the router back as the inventory has it."""
    try:
        provision.apply(
            log,
            "router back to the inventory's settings",
            inventory=inventory,
            limit=router.host,
            tags="router",
        )
    except RuntimeError as e:
        progress(f"could not restore the router ({e}); run: fab provision --tags router")


def run_routing(
    inventory: Path | None,
    ep: Endpoints,
    conversations_for,
    lc_for,
    out_dir: Path,
    log: Path,
    slo: SLO,
    save,
    tier: str = "",
    into: Routing | None = None,
) -> Routing:
    """Every configuration of :data:`CONFIGS` the inventory allows, in order.

    *conversations_for(i)* gives run *i*'s fresh conversation sets (run one after another),
    *lc_for(url, model, i)* its load config; *save(result)* is called after each run (results
    survive an interruption). *tier*: "" with the serving nodes on the inventory's profile,
    :data:`NO_TIER` with them on ``none`` (the caller switched them); *into*: an earlier tier's
    result to add these runs to.
    """
    router = router_of(ep)
    serving = list(ep.serving)
    result: Routing = into or {"router": router.url, "runs": [], "missing": [], "switch_s": []}
    first = len(result["runs"])
    try:
        for i, (label, (n, policy)) in enumerate(CONFIGS.items(), start=first):
            if n > len(serving):
                result["missing"].append(f"routing {label}: the inventory has {len(serving)} serving node(s)")
                continue
            nodes = serving[:n]
            result["switch_s"].append(round(apply(inventory, router, nodes, policy, log), 1))
            wait_backends(router, n)
            lc = lc_for(router.url, ep.vllm(nodes[0])["model"], i)
            entry = run_config(label, conversations_for(i), lc, ep, router, nodes, out_dir, slo, tier)
            result["runs"].append(entry)
            result["target"] = target(result["runs"])
            if tier:
                result["target_without_tier"] = target(result["runs"], tier)
            save(result)
    finally:
        restore(inventory, router, log)
    return result
