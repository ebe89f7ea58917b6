"""`fab run-bench`: the tier benchmark matrix, where its time goes, and the report.

The package: :mod:`~kvstack.bench.options` (every option, declared once; the fab task is built
from it), :mod:`~kvstack.bench.context` (what the steps share), :mod:`~kvstack.bench.results`
(results.json; its keys and rows are typed in :mod:`kvstack.results_schema`),
:mod:`~kvstack.bench.step` (the protocol of a step and the measured run), one module per step
(:mod:`~kvstack.bench.matrix`, :mod:`~kvstack.bench.probe`, :mod:`~kvstack.bench.engines`,
:mod:`~kvstack.bench.routed`), :mod:`~kvstack.bench.targets` and :mod:`~kvstack.bench.run`
(:func:`run_bench`: validate, build the context, run each enabled step, finish).

One run, in ``results/<run id>/``:

1. **Endpoints** from Ansible (``playbooks/bench-endpoints.yml``): each role says where its service
   listens, with its own defaults and the inventory's values (vault included).
2. **Workload** built offline with the served model's own tokenizer (fetched from the serving
   node), sized against vLLM's actual KV space (read from ``vllm:cache_config_info``), so the
   working set is ``kv_ratio`` times what vLLM's own cache holds. Every run draws its own text
   (``--seed`` plus a random salt, recorded; each use of it a seed of its own, derived by name):
   no run can hit a prefix another run, or an earlier bench, stored, so nothing is ever flushed
   from any tier.
3. **Matrix**: tier profiles (x LMCache chunk sizes, optional) x load levels, repeated; each cell
   switches the serving node through ``site.yml`` (the provisioning code path), sends warm-up
   requests that are not measured, empties vLLM's own prefix cache, then runs each load level with
   counters read before and after (:mod:`kvstack.metrics`). The profile order is shuffled per
   repeat (seeded), so drift does not favour one profile.
4. **TTFT probe** (profile ``kv``): a 4k-token context cold, as vLLM's own prefix-cache hit, and
   served from the KV-server tier after vLLM's cache was emptied.
5. **KV data path** on a serving node against the KV server, and the **RocksDB engine** with each
   Kvrocks tuning profile on disk and tmpfs (:mod:`kvstack_node.datapath`).
6. **Routing** (:mod:`kvstack.routing`): the multi-round workload through the router, 1 node vs
   2 nodes and round-robin vs cache-aware, with per-node requests and hit rates.
7. **Dynamo** (:mod:`kvstack.dynamo_bench`, ``--dynamo``, off by default): the same kind of
   workload through NVIDIA Dynamo's frontend and KV router, with and without LMCache attached to
   its vLLM workers, on one and two workers; Dynamo goes back to the inventory's state after.
8. **Targets** of the issues, met or missed, then ``report.md`` and plots (:mod:`kvstack.report`).

``results.json`` is rewritten after every step: an interrupted or failed run keeps what it
measured, and its report lists what is missing. The serving nodes go back to the inventory's tier
profile at the end.
"""

from kvstack.bench.context import Cell, Context
from kvstack.bench.matrix import cells, schedule
from kvstack.bench.options import PRESETS, PROFILES, BenchError, BenchOptions, Load, validate
from kvstack.bench.results import Results
from kvstack.bench.run import STEPS, run_bench
from kvstack.bench.targets import TARGETS, targets
from kvstack.stack import StackError

__all__ = [
    "PRESETS",
    "PROFILES",
    "STEPS",
    "TARGETS",
    "BenchError",
    "BenchOptions",
    "Cell",
    "Context",
    "Load",
    "Results",
    "StackError",
    "cells",
    "run_bench",
    "schedule",
    "targets",
    "validate",
]
