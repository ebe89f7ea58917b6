"""The rendered GPU command lines through the pinned software's own code, on a lab serving node
(vLLM 0.32.0 and LMCache 0.5.6 are installed there; the CPU build of vLLM shares the CUDA wheel's
Python code, argument parser included).

- vLLM's parser (``kvstack_node.vllm_args``: ``make_arg_parser`` + ``validate_parsed_serve_args``)
  accepts every CUDA instance's argv;
- LMCache's parser (``kvstack_node.lmcache_args``: ``ServerCommand`` and the config builders) accepts
  the CUDA node's ``lmcache server`` argv, and LMCache's device registry says which transfer mode a
  CUDA vLLM's connector picks (``auto`` resolves to the device's ``default_mp_transfer_mode``): the
  server must register that mode, or each instance's KV-cache registration waits 300 s and fails.

Each tool's ``check()`` runs for all command lines in one Python process on the node (importing vLLM
takes seconds there).
"""

from __future__ import annotations

import base64
import json
import shlex

import pytest
from scenario import exec_start, lmcache_server_args

from kvstack import REPO

PYTHON = "/opt/kvstack/venv/bin/python"
TOOLS = "/opt/kvstack/tools"
DRIVER = """
import base64, contextlib, json, sys
sys.path.insert(0, {tools!r})
import kvstack_node.{module} as tool
out = []
for call in json.loads(base64.b64decode({payload!r})):
    try:
        with contextlib.redirect_stdout(sys.stderr):
            res = tool.check(*call["args"], **call["kwargs"])
        out.append({{"ok": True, "result": res if isinstance(res, dict) else vars(res)}})
    except SystemExit as exc:
        out.append({{"ok": False, "exit": exc.code}})
    except Exception as exc:
        out.append({{"ok": False, "error": repr(exc)}})
print(json.dumps(out, default=str))
"""


@pytest.fixture(scope="module")
def node(lab):
    """A provisioned lab serving node with the pinned software (skips with --no-lab)."""
    if lab is None:
        pytest.skip("needs the lab's serving node (the pinned vLLM and LMCache)")
    import testinfra

    name = next(n for n in lab.nodes if "serve" in n)
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=str(REPO / "inventory" / "lab"))


def checked(node, module: str, calls: list[tuple[list, dict]]) -> list[dict]:
    """*module*'s ``check(argv, **kwargs)`` on the node for each (argv, kwargs), in one process."""
    payload = base64.b64encode(json.dumps([{"args": [a], "kwargs": k} for a, k in calls]).encode()).decode()
    code = DRIVER.format(tools=TOOLS, module=module, payload=payload)
    env = "HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 LMCACHE_TRACK_USAGE=false"
    res = node.run(f"{env} {PYTHON} -c {shlex.quote(code)}")
    assert res.rc == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def instance_argvs(rendered) -> list[list[str]]:
    out = []
    for dropin in sorted(rendered.root.glob("*/etc/systemd/system/vllm@*.service.d/kvstack.conf")):
        argv = exec_start(dropin.read_text())
        assert argv[1:3] == ["-m", "vllm.entrypoints.launchers.api_server.entry"]
        out.append(argv[3:])
    return out


@pytest.fixture(scope="module")
def vllm_checks(node, example, tp_ubuntu):
    """(argv, vLLM's verdict) for every CUDA instance of both scenarios, and one misspelt flag."""
    argvs = instance_argvs(example) + instance_argvs(tp_ubuntu)
    bad = [*argvs[0], "--gpu-memory-utilisation", "0.9"]
    results = checked(node, "vllm_args", [(a, {}) for a in [*argvs, bad]])
    return list(zip([*argvs, bad], results, strict=True))


def test_vllms_parser_accepts_every_cuda_instance(vllm_checks):
    good = vllm_checks[:-1]
    assert len(good) == 8  # 2 nodes x 2 instances x 2 scenarios
    for argv, res in good:
        assert res["ok"], (argv, res)
        parsed = res["result"]
        assert int(parsed["tensor_parallel_size"]) == int(argv[argv.index("--tensor-parallel-size") + 1])
        assert float(parsed["gpu_memory_utilization"]) == 0.9


def test_vllms_parser_refuses_a_misspelt_flag(vllm_checks):
    _, res = vllm_checks[-1]
    assert res == {"ok": False, "exit": 2}


@pytest.fixture(scope="module")
def lmcache_checks(node, example, tp_ubuntu):
    """LMCache's verdict on both scenarios' CUDA server argv and on the lab node's own unit."""
    lab_unit = node.file("/etc/systemd/system/lmcache.service").content_string
    calls = [
        (lmcache_server_args(r.unit("gpu-node01", "lmcache.service")), {"device": "cuda"})
        for r in (example, tp_ubuntu)
    ]
    calls.append((lmcache_server_args(lab_unit), {"device": "cpu"}))
    return checked(node, "lmcache_args", calls)


def test_lmcache_serves_the_mode_a_cuda_vllm_picks(lmcache_checks):
    for res in lmcache_checks[:2]:
        assert res["ok"], res
        cfg = res["result"]
        assert cfg["connector_auto_mode"] == "lmcache_driven"
        # lmcache/v1/multiprocess/server.py registers the module of its one mode, or both for auto.
        assert cfg["supported_transfer_mode"] in ("auto", cfg["connector_auto_mode"]), cfg
        assert cfg["l2_adapters"] == ["ValkeyL2AdapterConfig"]
        assert cfg["max_gpu_workers"] == 2


def test_the_lab_server_serves_the_cpu_connectors_mode_too(lmcache_checks):
    """The same server setting on the lab's CPU node, whose connector picks engine_driven."""
    res = lmcache_checks[2]
    assert res["ok"], res
    cfg = res["result"]
    assert cfg["connector_auto_mode"] == "engine_driven"
    assert cfg["supported_transfer_mode"] in ("auto", cfg["connector_auto_mode"]), cfg


def test_lmcache_bounds_what_each_node_writes_to_the_kv_tier(lmcache_checks):
    """The example's budget (kv_capacity_gb 3300) x lmcache_kv_capacity_share 0.5 over its two
    serving nodes, with LRU eviction and the keys' TTL, as LMCache's own parser reads them; the
    lab's 2.2 GiB the same way."""
    cfg = lmcache_checks[0]["result"]
    assert cfg["l2_max_capacity_gb"] == [825.0], cfg
    assert cfg["l2_eviction"] == ["LRU"] and cfg["l2_ttl_seconds"] == [2592000], cfg
    lab = lmcache_checks[2]["result"]
    assert lab["l2_max_capacity_gb"] == [0.55] and lab["l2_eviction"] == ["LRU"], lab
