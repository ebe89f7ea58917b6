"""Tier profiles on the lab: each applied by site.yml in turn passes the serving node checks;
re-applying restarts nothing; a vLLM restart still hits LMCache and the KV server.

Profiles are applied to one serving node (``--limit``, the roles they change: ``--tags
lmcache,vllm``, as `fab run-bench` switches them) and checked there; the other node stays on the
inventory's profile, so the cross-node hit check has a peer that shares the KV server."""

from __future__ import annotations

import pytest

from kvstack import provision

SERVING_CHECKS = "tests/node/test_serving.py"


def apply(node: str, profile: str) -> dict[str, dict[str, int]]:
    out = provision.playbook(
        "site.yml", limit=node, tags="lmcache,vllm", extra_vars={"tier_profile": profile}, capture=True
    )
    rec = provision.recap(out.stdout)
    assert set(rec) == {node}, rec
    assert all(c["failed"] == 0 and c["unreachable"] == 0 for c in rec.values()), rec
    return rec


def main_pids(testinfra_backend, nodes) -> dict[str, tuple[str, str]]:
    out = {}
    for name in nodes:
        host = testinfra_backend(name)
        out[name] = tuple(
            host.check_output(f"systemctl show -p MainPID --value {unit}")
            for unit in ("vllm@main", "lmcache")
        )
    return out


@pytest.fixture(scope="module")
def serving_nodes(up_lab):
    from kvstack import inventory

    return list(inventory.load(inventory.LAB_INVENTORY).hosts("serving"))


def test_each_tier_profile_applies_and_passes_node_checks(
    request, serving_nodes, testinfra_backend, node_checks
):
    if not request.config.option.profiles:
        # The default suite must fit CI (65 min); the switches themselves are also run by the
        # bench (test_bench_lab.py switches none and kv through site.yml).
        pytest.skip("four profile switches, ~8 min: run with --profiles")
    node, peer = serving_nodes[0], serving_nodes[1:]
    peer_pids = main_pids(testinfra_backend, peer)
    pids = {}
    for profile in ("none", "dram", "kv", "dram+kv"):
        apply(node, profile)
        proc = node_checks(SERVING_CHECKS, f"--set=tier_profile={profile}", f"--hosts=ansible://{node}")
        assert proc.returncode == 0, f"profile {profile}:\n{proc.stdout[-5000:]}"
        new = main_pids(testinfra_backend, [node])
        if profile in ("kv", "dram+kv"):
            # LMCache's arguments changed: it restarted (and vLLM with it: PartOf=lmcache.service).
            assert new[node][1] != pids[node][1], f"{profile}: lmcache not restarted on {node}"
        pids = new
    # Re-applying the same profile changes and restarts nothing; the other node was never touched.
    rec = apply(node, "dram+kv")
    assert sum(c["changed"] for c in rec.values()) == 0, rec
    assert main_pids(testinfra_backend, [node]) == pids
    assert main_pids(testinfra_backend, peer) == peer_pids


def test_vllm_restart_still_hits_lmcache_and_kv_server(serving_nodes, node_checks):
    proc = node_checks(
        f"{SERVING_CHECKS}::test_repeated_long_prompt_is_served_from_lmcache",
        "--set=tier_profile=dram+kv",
        "--set=check_evict=restart",
        f"--hosts=ansible://{serving_nodes[0]}",
    )
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "1 passed" in proc.stdout


def test_bad_vllm_argument_is_rejected_by_vllms_parser_before_any_change(serving_nodes, testinfra_backend):
    node = serving_nodes[0]
    host = testinfra_backend(node)
    dropin = "/etc/systemd/system/vllm@main.service.d/kvstack.conf"
    before = host.file(dropin).content_string
    pid = host.check_output("systemctl show -p MainPID --value vllm@main")
    out = provision.playbook(
        "site.yml",
        limit=node,
        tags="vllm",
        extra_args=["-e", '{"vllm_extra_args": ["--no-such-flag"]}'],
        capture=True,
        check_rc=False,
    )
    assert out.returncode != 0
    assert "unrecognized arguments: --no-such-flag" in out.stdout
    assert host.file(dropin).content_string == before
    assert host.check_output("systemctl show -p MainPID --value vllm@main") == pid
