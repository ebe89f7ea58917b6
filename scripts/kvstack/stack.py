"""How the bench reaches the stack: endpoints from Ansible, SSH to nodes, vLLM's dev endpoints,
counter sources, and the KV data-path bench run on a serving node.

Everything here takes its addresses from ``playbooks/bench-endpoints.yml`` (each role says where
its service listens), so the same code reaches the lab and bare metal.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvstack import metrics as m
from kvstack import provision
from kvstack.log import brief
from kvstack.waits import wait_until


class StackError(RuntimeError):
    """The stack cannot be reached or does not look as the inventory says."""


@dataclass
class Endpoints:
    """What ``playbooks/bench-endpoints.yml`` wrote (secrets included: never saved in results)."""

    nodes: dict[str, dict[str, Any]]
    serving: dict[str, dict[str, Any]]
    kv: list[str]
    #: router host -> url, metrics_url, policy, backends (URLs), backend_hosts
    router: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: frontend: host -> url, router_mode, ...; workers: host -> health_url, metrics_url, model, ...
    dynamo: dict[str, dict[str, Any]] = field(default_factory=dict)

    def vllm(self, node: str) -> dict[str, Any]:
        """The first vLLM instance of *node*."""
        eps = self.serving[node]["vllm"]
        if not eps:
            raise StackError(f"{node}: no vllm_instances")
        return eps[0]

    def lmcache(self, node: str) -> dict[str, Any]:
        """*node*'s LMCache endpoints and KV-server settings."""
        return self.serving[node]["lmcache"]


def fetch_endpoints(inventory: Path | None, extra_vars: dict[str, Any] | None = None) -> Endpoints:
    """Run ``playbooks/bench-endpoints.yml`` into a root-only temporary file, read it, delete it.

    *extra_vars* go to the playbook as well (e.g. ``dynamo_enabled``: where Dynamo would listen)."""
    fd, path = tempfile.mkstemp(prefix="kvstack-endpoints-", suffix=".json")
    os.close(fd)
    try:
        provision.playbook(
            "playbooks/bench-endpoints.yml",
            inventory=inventory,
            extra_vars={**(extra_vars or {}), "bench_endpoints_file": path},
            capture=True,
            echo=False,
        )
        data = json.loads(Path(path).read_text())
    finally:
        Path(path).unlink(missing_ok=True)
    if not data.get("serving"):
        raise StackError("the inventory has no host in group serving")
    return Endpoints(
        nodes=data["nodes"],
        serving=data["serving"],
        kv=list(data.get("kv") or []),
        router=data.get("router") or {},
        dynamo=data.get("dynamo") or {},
    )


def connection(ep: Endpoints, node: str) -> Any:
    """A Fabric connection to *node*, as Ansible reaches it."""
    from fabric import Connection

    n = ep.nodes[node]
    kwargs = {"key_filename": n["ssh_key"]} if n.get("ssh_key") else {}
    return Connection(n["ssh_host"], user=n["ssh_user"], port=int(n["ssh_port"]), connect_kwargs=kwargs)


def post(url: str, headers: dict[str, str] | None = None, timeout: float = 30.0) -> tuple[int, str]:
    """POST with an empty body; returns the HTTP status (errors included) and the body's text."""
    req = urllib.request.Request(url, data=b"", method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def reset_succeeded(status: int, body: str) -> bool:
    """Whether vLLM's answer to ``POST /reset_prefix_cache`` says the cache was emptied: 200, and
    not a JSON body with ``"success": false`` (vLLM's answer while requests still hold blocks)."""
    if status != 200:
        return False
    try:
        doc = json.loads(body) if body.strip() else None
    except ValueError:
        return True
    return not (isinstance(doc, dict) and doc.get("success") is False)


def reset_prefix_cache(vllm: dict[str, Any], attempts: int = 10, wait_s: float = 0.5) -> bool:
    """Empty vLLM's own prefix cache (a dev-mode endpoint; LMCache's tiers are left alone). A reset
    refused while requests hold blocks is retried *attempts* times, *wait_s* apart; True only when
    vLLM said it emptied the cache (:func:`reset_succeeded`)."""
    for i in range(attempts):
        if reset_succeeded(*post(vllm["url"] + "/reset_prefix_cache", auth_headers(vllm))):
            return True
        if i + 1 < attempts:
            time.sleep(wait_s)
    return False


def complete(
    url: str,
    model: str,
    prompt: str,
    *,
    max_tokens: int = 8,
    api_key: str | None = None,
    timeout: float = 120.0,
) -> str:
    """One greedy, non-streaming completion from *url* (a vLLM or the router): its text.

    Raises:
        OSError: the request failed (``urllib.error.HTTPError`` for an HTTP error status).
    """
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    headers = {
        "Content-Type": "application/json",
        **({"Authorization": f"Bearer {api_key}"} if api_key else {}),
    }
    req = urllib.request.Request(
        url.rstrip("/") + "/v1/completions", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())["choices"][0]["text"]


def wait_healthy(vllm: dict[str, Any], timeout_s: float = 900.0) -> None:
    """Poll /health until vLLM answers 200."""

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(vllm["url"] + "/health", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    wait_until(healthy, timeout_s, 2, lambda: f"{vllm['url']}/health did not answer within {timeout_s:.0f} s")


def kv_space_tokens(vllm: dict[str, Any]) -> tuple[int, int]:
    """vLLM's KV space as (tokens, block size), from its ``/metrics``."""
    return parse_kv_space(m.http_get(vllm["url"] + "/metrics", headers=auth_headers(vllm)), vllm["url"])


def parse_kv_space(metrics_text: str, where: str = "vLLM") -> tuple[int, int]:
    """(tokens, block size) from ``vllm:cache_config_info``: blocks (the override when set) x size."""
    for line in metrics_text.splitlines():
        if line.startswith("vllm:cache_config_info{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            blocks = labels.get("num_gpu_blocks_override")
            if blocks in (None, "None", ""):
                blocks = labels.get("num_gpu_blocks")
            bs = int(labels["block_size"])
            return int(blocks) * bs, bs
    raise StackError(f"{where}/metrics has no vllm:cache_config_info")


def auth_headers(vllm: dict[str, Any]) -> dict[str, str]:
    """The bearer header for *vllm*'s API key, or none."""
    return {"Authorization": f"Bearer {vllm['api_key']}"} if vllm.get("api_key") else {}


def metric_sources(
    ep: Endpoints, nodes: list[str], lmcache: bool = True
) -> tuple[list[m.Source], dict[str, str]]:
    """Counter sources for the serving *nodes* (their LMCache servers with *lmcache*: profile
    ``none`` runs none), the KV server and every node's exporter."""
    sources: list[m.Source] = []
    for node in nodes:
        sources.append(vllm_source(ep.vllm(node), f"vllm@{node}"))
        if lmcache:
            sources.append(lmcache_source(ep, node))
    for node, info in ep.nodes.items():
        if info.get("node_exporter_url"):
            sources.append(
                m.Source(
                    f"node@{node}", "node", lambda u=info["node_exporter_url"]: m.scrape(u, m.NODE_PREFIXES)
                )
            )
    if nodes:
        lm = ep.lmcache(nodes[0])
        members = kv_members(lm)
        for addr in members:  # one source per shard of a sharded tier ("kv" for one server)
            name = "kv" if len(members) == 1 else f"kv@{addr}"
            sources.append(m.Source(name, "kv", lambda lm=lm, addr=addr: _kv_info(lm, addr)))
    return sources, {s.name: s.kind for s in sources}


def kv_members(lm: dict[str, Any]) -> list[str]:
    """The KV tier's servers as host:port: a cluster's members, else the one server ([] without)."""
    if lm.get("kv_nodes"):
        return list(lm["kv_nodes"])
    return [f"{lm['kv_host']}:{lm['kv_port']}"] if lm.get("kv_host") else []


def vllm_source(vllm: dict[str, Any], name: str) -> m.Source:
    """A vLLM endpoint's ``/metrics`` as a counter source called *name*."""
    return m.Source(name, "vllm", lambda: m.scrape(vllm["url"] + "/metrics", headers=auth_headers(vllm)))


def lmcache_source(ep: Endpoints, node: str) -> m.Source:
    """*node*'s LMCache server counters (loopback only: read over SSH)."""
    url = ep.lmcache(node)["metrics_url"]
    return m.Source(f"lmcache@{node}", "lmcache", lambda: _ssh_scrape(ep, node, url))


def run_on(ep: Endpoints, node: str, cmd: str, *, warn: bool = False) -> Any:
    """Run *cmd* on *node* over SSH, output captured; never reads this process's stdin (a
    terminal's input, or pytest's captured stdin, which would fail the call)."""
    with connection(ep, node) as c:
        return c.run(cmd, hide=True, warn=warn, in_stream=False)


def _ssh_scrape(ep: Endpoints, node: str, url: str) -> m.Snapshot:
    """Scrape a loopback-only endpoint on *node* over SSH (curl on the node)."""
    try:
        out = run_on(ep, node, f"curl -sf --max-time 10 {url}", warn=True)
        if not out.ok:
            return m.Snapshot(error=f"{node}: {url}: curl exit {out.exited}")
        return m.parse_prometheus(out.stdout)
    except Exception as e:  # the run goes on; the report lists the source as missing
        return m.Snapshot(error=f"{node}: {url}: {brief(e)}")


def _kv_client(lm: dict[str, Any], addr: str | None = None) -> Any:
    """A redis-py client of the KV server LMCache uses, or of the member *addr* (host:port) of a
    sharded tier (its password, a 10 s timeout)."""
    import redis

    host, _, port = (addr or f"{lm['kv_host']}:{lm['kv_port']}").rpartition(":")
    return redis.Redis(host=host, port=int(port), password=lm.get("kv_password") or None, socket_timeout=10)


def _kv_info(lm: dict[str, Any], addr: str | None = None) -> m.Snapshot:
    """INFO of the KV server LMCache uses (or of the member *addr* of a sharded tier)."""
    try:
        with contextlib.closing(_kv_client(lm, addr)) as r:
            return m.parse_info(r.info("all"))
    except Exception as e:
        return m.Snapshot(
            error=f"KV server {addr or lm['kv_host'] + ':' + str(lm['kv_port'])}: {type(e).__name__}"
        )


def kv_clients(lm: dict[str, Any]) -> list[str]:
    """Addresses (host:port) of the KV server's clients; [] while it does not answer or still
    loads its data (redis answers CLIENT LIST then, but refuses reads and writes)."""
    try:
        with contextlib.closing(_kv_client(lm)) as r:
            if int(r.info("persistence").get("loading", 0)):
                return []
            return [c["addr"] for c in r.client_list()]
    except Exception:  # down or restarting: no clients yet
        return []


def run_datapath(ep: Endpoints, node: str, sizes: tuple[int, ...], n: int, l2_workers: int) -> dict[str, Any]:
    """The KV data-path bench on *node*: the node tool kvstack_node.datapath as roles/node_tools
    installed it, in the serving node's venv (so LMCache's own L2 client runs there, with
    *l2_workers* connections), against the KV server; the password goes over stdin, never argv."""
    lm = ep.lmcache(node)
    if lm.get("kv_nodes"):  # its clients speak to one server: a cluster member MOVEs most keys away
        return {
            "kv_datapath": [],
            "missing": [
                "KV data path: the KV tier is a cluster; the data-path step measures one server only"
            ],
        }
    cmd = (
        f"IFS= read -r KVSTACK_KV_PASSWORD; export KVSTACK_KV_PASSWORD; PYTHONPATH={lm['tools_dir']}; "
        f"export PYTHONPATH; exec {lm['venv_python']} -m kvstack_node.datapath datapath "
        f"--host {lm['kv_host']} --port {lm['kv_port']} "
        f"--sizes {','.join(map(str, sizes))} --n {n} --l2-workers {int(l2_workers)}"
    )
    with connection(ep, node) as c:
        out = c.run(
            f"sh -c '{cmd}'",
            hide="stdout",
            warn=True,
            in_stream=io.StringIO((lm.get("kv_password") or "") + "\n"),
        )
    if not out.ok:
        return {
            "kv_datapath": [],
            "missing": [f"KV data path on {node}: exit {out.exited}: {out.stderr.strip()[-300:]}"],
        }
    return json.loads(out.stdout)
