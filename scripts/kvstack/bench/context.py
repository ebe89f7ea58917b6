"""What every bench step works with (:class:`Context`): the options, the endpoints, the node under
test, the served model's tokenizer and KV size, the results directory, seeds derived by name,
and the switch of the serving node's configuration through ``site.yml`` (restored at the end)."""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kvstack import provision, stack
from kvstack.bench import workload
from kvstack.bench.options import BenchError, BenchOptions, Load, check_chunk_sizes, kv_side, yaml_value
from kvstack.bench.results import Results, now
from kvstack.log import brief, progress
from kvstack.stats import SLO
from kvstack.workloads import TokenizerAdapter, Workload, derive_seed, kv_bytes_per_token

MiB = 1 << 20
#: bytes per element of the dtypes a model's config.json names (``dtype``, older ``torch_dtype``)
DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "float8_e4m3fn": 1}


#: the label suffix of a cell whose vLLM cache holds the whole working set (the ceiling)
AMPLE = ", ample vLLM cache"


@dataclass(frozen=True)
class Cell:
    """A stack configuration to measure: tier profile, (optionally) LMCache chunk size,
    (optionally) vLLM's own cache in blocks (``vllm_num_kv_blocks``; the ceiling's cells), and
    (optionally) one ``--vary`` variable's value (*tweak*: name and the value as given)."""

    profile: str
    chunk: int | None = None
    kv_blocks: int | None = None
    tweak: tuple[str, str] | None = None

    @property
    def label(self) -> str:
        """The report's profile column."""
        label = self.profile if self.chunk is None else f"{self.profile} chunk={self.chunk}"
        if self.tweak:
            label += f" {self.tweak[0]}={self.tweak[1]}"
        return label + (AMPLE if self.kv_blocks else "")

    def extra_vars(self) -> dict[str, Any]:
        """``-e`` values of site.yml for this cell."""
        ev: dict[str, Any] = {"tier_profile": self.profile}
        if self.chunk is not None:
            ev["lmcache_chunk_size"] = self.chunk
        if self.kv_blocks:
            ev["vllm_num_kv_blocks"] = self.kv_blocks
        if self.tweak:
            ev[self.tweak[0]] = yaml_value(self.tweak[1])
        return ev


def switch(o: BenchOptions, nodes: list[str], cell: Cell | None, log: Path) -> float:
    """Apply *cell* (None: the inventory's own values) to the serving *nodes* through site.yml,
    and to the kv hosts as well when a ``--set``/``--vary`` variable is the KV server's; returns
    the seconds it took."""
    what = cell.label if cell else "the inventory's tier profile"
    tags, limit = "lmcache,vllm", ",".join(nodes)
    if kv_side(o):
        tags, limit = "redis_server,kvrocks," + tags, limit + ",kv"
    progress(f"switching {limit} to {what} (site.yml --tags {tags})")
    ev = {**{k: yaml_value(v) for k, v in o.extra_vars.items()}, **cell.extra_vars()} if cell else None
    return provision.apply(
        log, f"{now()} switch to {what}", inventory=o.inventory, limit=limit, tags=tags, extra_vars=ev
    )


def bytes_per_token(cfg: dict[str, Any]) -> int:
    """KV bytes per token from a model's config.json (its own ``head_dim`` when it has one)."""
    heads = cfg["num_attention_heads"]
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return kv_bytes_per_token(
        cfg["num_hidden_layers"],
        cfg.get("num_key_value_heads", heads),
        cfg.get("head_dim") or cfg["hidden_size"] // heads,
        DTYPE_BYTES.get(str(dtype), 2),
    )


def machine() -> dict[str, Any]:
    """Where the bench ran (the controller; the lab's nodes share its CPUs)."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"controller CPUs": os.cpu_count(), "controller memory GiB": round(mem / 2**30, 1)}


@dataclass
class Context:
    """One bench run's shared state; built by :meth:`open`, the model read by :meth:`prepare`."""

    o: BenchOptions
    loads: list[Load]
    ep: stack.Endpoints
    node: str
    res: Results
    salt: int
    slo: SLO
    tok: TokenizerAdapter | None = None
    kv_tokens: int = 0
    bpt: int = 0
    #: a workload as the matrix runs it (its size and working set go into results.json)
    sample: Workload | None = None
    #: the configuration the node was switched to (None: the inventory's)
    current: Cell | None = None
    switched: bool = False

    @property
    def vllm(self) -> dict[str, Any]:
        """The node's first vLLM instance."""
        return self.ep.vllm(self.node)

    @property
    def log(self) -> Path:
        """Where the switches' Ansible output goes."""
        return self.res.dir / "ansible.log"

    @classmethod
    def open(cls, o: BenchOptions, loads: list[Load], ep: stack.Endpoints) -> Context:
        """The node under test (checked against *ep*) and a new results directory."""
        node = o.node or next(iter(ep.serving))
        if node not in ep.serving:
            raise BenchError(f"--node: {node} is not in group serving ({', '.join(ep.serving)})")
        check_chunk_sizes(o, node, int(ep.lmcache(node).get("block_size") or 1))
        res = Results(o.results_dir)
        progress(f"results: {res.dir}")
        # Text is drawn per run from --seed and a random salt: the KV server keeps what earlier runs
        # stored (nothing is flushed), so reusing their text would turn cold requests into hits.
        salt = derive_seed(o.seed, random.SystemRandom().randrange(1 << 62))
        slo = SLO(ttft_s=o.slo_ttft_ms / 1000, tpot_s=o.slo_tpot_ms / 1000)
        ctx = cls(o, loads, ep, node, res, salt, slo)
        res.update(
            machine=machine(),
            options={k: str(v) if isinstance(v, Path) else v for k, v in asdict(o).items()},
            ttft_probe=None,
            ttft_probes={},
        )
        return ctx

    def seed(self, name: str, *parts: object) -> int:
        """A seed of its own for each named use (never two uses with one seed)."""
        return derive_seed(self.salt, name, *parts)

    def prepare(self) -> None:
        """The served model's tokenizer and config (from the node), its KV bytes per token and
        vLLM's KV space; recorded in results.json."""
        with stack.connection(self.ep, self.node) as c:
            for name in ("tokenizer.json", "config.json"):
                c.get(f"{self.vllm['model_path']}/{name}", str(self.res.dir / name))
        self.tok = TokenizerAdapter.from_file(self.res.dir / "tokenizer.json")
        self.bpt = bytes_per_token(json.loads((self.res.dir / "config.json").read_text()))
        self.kv_tokens, block = stack.kv_space_tokens(self.vllm)
        self.res.update(chunk_bytes=int(self.ep.lmcache(self.node)["chunk_size"]) * self.bpt)
        self.sample = workload.build_workload(self.o, self.tok, self.kv_tokens, self.seed("sample"))
        self.res.update(
            workload={
                **self.sample.summary(self.bpt),
                "kv_space_tokens": self.kv_tokens,
                "block_size": block,
                "kv_space_ratio": round(self.sample.working_set_tokens / self.kv_tokens, 2),
            }
        )
        self.res.data["machine"]["description"] = (
            f"model {self.vllm['model']} ({self.bpt} B of KV per token), vLLM KV space {self.kv_tokens:,} "
            f"tokens ({self.kv_tokens * self.bpt / MiB:.0f} MiB), node {self.node}"
        )
        self.res.save()

    def switch_to(self, cell: Cell) -> None:
        """Put the node on *cell* (nothing if it is there); the run restores it at the end."""
        if not self.o.switch or cell == self.current:
            return
        took = round(switch(self.o, [self.node], cell, self.log), 1)
        self.res.update(switch_s=[*self.res.data.get("switch_s", []), took])
        self.current, self.switched = cell, True

    def ready(self, cell: Cell, *seed: object) -> None:
        """The node on *cell*, its vLLM healthy, the unmeasured warm-up requests sent (their text
        seeded by *seed*)."""
        self.switch_to(cell)
        stack.wait_healthy(self.vllm)
        workload.warm_up(self.vllm, self.tok, self.o.warmup, self.seed("warm-up", *seed))

    def restore(self) -> None:
        """The inventory's own configuration on the node again, if a switch changed it."""
        if self.switched:
            switch(self.o, [self.node], None, self.log)
            self.current, self.switched = None, False

    @contextlib.contextmanager
    def optional(self, name: str) -> Iterator[None]:
        """Record a failed optional step as missing and go on; Ctrl-C still stops the run."""
        try:
            yield
        except Exception as e:
            progress(f"{name} failed: {brief(e)}")
            self.res.note_missing(f"{name}: failed: {brief(e)}")
