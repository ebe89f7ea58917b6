"""A live view of the stack for a terminal (``fab status``), read from Prometheus.

Per node: whether its vLLM engines are up, requests/s, TTFT P95, hit rate by tier (vLLM's own
cache, LMCache's L1 node DRAM, its L2 KV tier) and, on kv hosts, the KV tier's use against its
budget; then the cluster-wide row and the alerts firing. Every figure is one of the recording
rules of roles/prometheus (files/rules/kvstack-recording.yml), so this view, the alerts and any
dashboard read the same numbers. ``--watch`` redraws it every few seconds.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kvstack import REPO, metrics
from kvstack import inventory as inv

#: column -> the recording rule (or query) it shows, by node
NODE_QUERIES = {
    "engine_up": 'min by (node) (up{job="vllm"})',
    "requests_per_s": "node:vllm_requests:rate1m",
    "ttft_p95_s": "node:vllm_ttft_seconds:p95_5m",
    "hit_vllm": "node:vllm_cache_hit_ratio:rate5m",
    "hit_l1": "node:lmcache_l1_hit_ratio:rate5m",
    "hit_l2": "node:lmcache_l2_hit_ratio:rate5m",
    "kv_used_bytes": "node:kvstack_kv_used_bytes",
    "kv_budget_bytes": "node:kvstack_kv_budget_bytes",
}
CLUSTER_QUERIES = {
    "requests_per_s": "cluster:vllm_requests:rate1m",
    "ttft_p95_s": "cluster:vllm_ttft_seconds:p95_5m",
    "hit_vllm": "cluster:vllm_cache_hit_ratio:rate5m",
    "hit_l1": "cluster:lmcache_l1_hit_ratio:rate5m",
    "hit_l2": "cluster:lmcache_l2_hit_ratio:rate5m",
    "kv_used_bytes": "cluster:kvstack_kv_used_bytes",
    "kv_budget_bytes": "cluster:kvstack_kv_budget_bytes",
}
#: where Prometheus' port is defaulted, for inventories that set none (its one owner)
SHARED_DEFAULTS = REPO / "roles" / "kvstack_defaults" / "defaults" / "main.yml"


class StatusError(RuntimeError):
    """Prometheus could not be found or read."""


@dataclass
class Status:
    """One reading: figures per node and cluster-wide, and the alerts firing."""

    url: str
    at: float
    nodes: dict[str, dict[str, float]] = field(default_factory=dict)
    cluster: dict[str, float] = field(default_factory=dict)
    alerts: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        clean = lambda d: {k: (None if math.isnan(v) else v) for k, v in d.items()}  # noqa: E731
        return {
            "prometheus": self.url,
            "at": self.at,
            "nodes": {n: clean(v) for n, v in self.nodes.items()},
            "cluster": clean(self.cluster),
            "alerts": self.alerts,
        }


def prometheus_url(inventory: Path | str) -> str:
    """Prometheus' URL from the inventory: the first host of group ``monitoring``, at its
    ``access_address`` (else ``ansible_host``) and ``prometheus_port``."""
    hosts = inv.load(inventory).hosts("monitoring")
    if not hosts:
        raise StatusError(
            f"{inventory}: group monitoring has no host (playbooks/monitoring.yml runs Prometheus there)"
        )
    name, hv = next(iter(hosts.items()))
    addr = hv.get("access_address") or hv.get("ansible_host") or name
    port = int(hv.get("prometheus_port") or yaml.safe_load(SHARED_DEFAULTS.read_text())["prometheus_port"])
    return f"http://{f'[{addr}]' if ':' in addr else addr}:{port}"


def get_json(url: str) -> Any:
    """GET *url* and parse its JSON body."""
    try:
        return json.loads(metrics.http_get(url))
    except OSError as e:
        raise StatusError(f"{url} did not answer: {e}") from None


def api(url: str, path: str, params: dict[str, str] | None = None) -> Any:
    """The ``data`` of Prometheus' HTTP API answer to *path* (StatusError unless it succeeded)."""
    q = f"?{urllib.parse.urlencode(params)}" if params else ""
    body = get_json(f"{url}{path}{q}")
    if body.get("status") != "success":
        raise StatusError(f"Prometheus at {url}: {path}: {body.get('error', body)}")
    return body["data"]


def query(url: str, expr: str) -> list[tuple[dict[str, str], float]]:
    """An instant query: (labels, value) per series."""
    data = api(url, "/api/v1/query", {"query": expr})
    return [(r["metric"], float(r["value"][1])) for r in data.get("result", [])]


def collect(url: str) -> Status:
    """Read every figure of the view from Prometheus at *url*."""
    st = Status(url=url, at=time.time())
    for col, expr in NODE_QUERIES.items():
        for labels, value in query(url, expr):
            if "node" in labels:
                st.nodes.setdefault(labels["node"], {})[col] = value
    for col, expr in CLUSTER_QUERIES.items():
        res = query(url, expr)
        if res:
            st.cluster[col] = res[0][1]
    for a in api(url, "/api/v1/alerts").get("alerts", []):
        if a.get("state") == "firing":
            lab = a.get("labels", {})
            st.alerts.append(
                {
                    "alert": lab.get("alertname", "?"),
                    "node": lab.get("node", ""),
                    "severity": lab.get("severity", ""),
                    "summary": a.get("annotations", {}).get("summary", ""),
                }
            )
    return st


def _pct(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:.0f}%"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None or math.isnan(v) else format(v, fmt)


def _kv(used: float | None, budget: float | None) -> str:
    if used is None or math.isnan(used):
        return "-"
    gb = f"{used / 2**30:.2f}"
    if budget and not math.isnan(budget) and budget > 0:
        return f"{gb}/{budget / 2**30:.2f} GiB ({100 * used / budget:.0f}%)"
    return f"{gb} GiB"


def _row(name: str, d: dict[str, float]) -> list[str]:
    up = d.get("engine_up")
    engine = "-" if up is None else ("up" if up >= 1 else "DOWN")
    return [
        name,
        engine,
        _num(d.get("requests_per_s"), ".2f"),
        _num(d.get("ttft_p95_s"), ".3f"),
        _pct(d.get("hit_vllm")),
        _pct(d.get("hit_l1")),
        _pct(d.get("hit_l2")),
        _kv(d.get("kv_used_bytes"), d.get("kv_budget_bytes")),
    ]


HEADER = ["node", "engine", "req/s", "TTFT p95 s", "hit vLLM", "hit L1", "hit L2", "KV tier used/budget"]


def render(st: Status) -> str:
    """The view as text: a table of nodes, the cluster row, then the alerts firing."""
    rows = [HEADER] + [_row(n, st.nodes[n]) for n in sorted(st.nodes)] + [_row("cluster", st.cluster)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    lines = [f"kvstack status from {st.url} at {time.strftime('%H:%M:%S', time.localtime(st.at))}"]
    lines += [fmt(rows[0]), fmt(["-" * w for w in widths]), *map(fmt, rows[1:])]
    lines.append(f"alerts firing: {len(st.alerts)}")
    lines += [f"  {a['severity'] or '-':8} {a['alert']} {a['node']}: {a['summary']}" for a in st.alerts]
    return "\n".join(lines)


def run(url: str, watch_s: float = 0, as_json: bool = False, say=print) -> Status:
    """Print the view once, or every *watch_s* seconds until interrupted; returns the last reading."""
    while True:
        st = collect(url)
        out = json.dumps(st.as_dict(), indent=2) if as_json else render(st)
        say(("\x1b[2J\x1b[H" if watch_s and not as_json else "") + out)
        if not watch_s:
            return st
        try:
            time.sleep(watch_s)
        except KeyboardInterrupt:
            return st
