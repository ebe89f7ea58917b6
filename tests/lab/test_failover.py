"""The router on the lab: a serving node powered off under load sent through the router; the
other node takes all traffic and no request fails after the switch-over window (the powered-off
node's vLLM drains its requests first); the node comes back (lab-up) and rejoins. Figures printed
and listed in the README."""

from __future__ import annotations

import json

import pytest

from kvstack import faults, lab, stack
from kvstack.workloads import TokenizerAdapter

VICTIM = "lab-serve2"


@pytest.fixture(scope="module")
def ep(up_lab):
    return stack.fetch_endpoints(None)


def test_serving_node_powered_off_behind_the_router(ep, up_lab, tmp_path):
    router = next(iter(ep.router.values()))
    victim_url = ep.vllm(VICTIM)["url"]
    assert victim_url in router["backends"]
    tok = tmp_path / "tokenizer.json"
    with stack.connection(ep, VICTIM) as c:
        c.get(ep.vllm(VICTIM)["model_path"] + "/tokenizer.json", str(tok))

    def stop() -> None:
        # The SSH session dies with the node: a failed call is expected.
        try:
            stack.run_on(ep, VICTIM, "systemctl poweroff", warn=True)
        except Exception as e:  # the connection drops with the node
            print(f"poweroff: {type(e).__name__}")

    def start() -> None:
        # A node still shutting down (vLLM may take its stop timeout under load) counts as up to
        # lab-up: boot it again only once it is off.
        assert lab.wait_node_off(up_lab, VICTIM, 180), f"{VICTIM} still running 180 s after its poweroff"
        lab.up()

    out = faults.router_failover(
        router["url"],
        router["metrics_url"],
        victim_url,
        ep.vllm(VICTIM)["model"],
        TokenizerAdapter.from_file(tok),
        stop,
        start,
        api_key=ep.vllm(VICTIM).get("api_key") or None,
    )
    print(json.dumps(out, indent=1))
    assert out["before_stop"] > 0  # load was running before the stop
    assert out["requests"] - out["before_stop"] > out["failed"]  # the other node went on serving
    assert out["failed_after_window"] == 0
    assert out["victim_requests_after_window"] == 0
    # A powered-off node's vLLM drains first (--shutdown-timeout, roles/vllm: 30 s), finishing what
    # it has; then health checks every 5 s, 2 failures, circuit breaker after 3.
    assert out["switch_over_s"] < 30 + 30
    stack.wait_healthy(ep.vllm(VICTIM))
