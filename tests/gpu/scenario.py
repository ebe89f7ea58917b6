"""The GPU tier's scenarios: the roles rendered for GPU nodes, without a GPU.

``render()`` runs ``playbooks/render.yml``: every host of an inventory (the bare-metal example by
default) on this controller with the facts of a scenario's machines (OS release, architecture,
kernel, memory), the real preflight on them, then each role's render entry point. What it writes is
what a GPU node would get: unit files, command lines, driver packages.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kvstack import REPO

PLAYBOOK = REPO / "tests" / "gpu" / "playbooks" / "render.yml"
EXAMPLE = REPO / "inventory" / "baremetal.example"
VAULT_PASS = EXAMPLE / ".vault-pass.example"
# Added to the example: Dynamo on, and a Grace (arm64) GPU node.
DYNAMO = REPO / "tests" / "gpu" / "inventory" / "dynamo_grace.yml"

# What a GPU node of each supported release reports (ansible_facts keys), beside its addresses.
OS_FACTS = {
    "Debian 12": {
        "distribution": "Debian",
        "distribution_major_version": "12",
        "distribution_version": "12.8",
        "distribution_release": "bookworm",
        "kernel": "6.1.0-28-amd64",
    },
    "Ubuntu 24.04": {
        "distribution": "Ubuntu",
        "distribution_major_version": "24",
        "distribution_version": "24.04",
        "distribution_release": "noble",
        "kernel": "6.8.0-49-generic",
    },
    "Ubuntu 22.04": {
        "distribution": "Ubuntu",
        "distribution_major_version": "22",
        "distribution_version": "22.04",
        "distribution_release": "jammy",
        "kernel": "5.15.0-126-generic",
    },
}

# An 8-GPU node: 2 TiB of RAM, 1 TiB /dev/shm (tmpfs, half the RAM by default).
NODE_FACTS = {
    "architecture": "x86_64",
    "memtotal_mb": 2_063_000,
    "processor_vcpus": 224,
    "mounts": [{"mount": "/dev/shm", "fstype": "tmpfs", "size_total": 1_056_000 * 1024 * 1024}],
}

# The model's config.json (Llama 3.1 8B's shape): the vLLM role checks that it exists.
MODEL_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_size": 4096,
    "max_position_embeddings": 131072,
    "torch_dtype": "bfloat16",
}


@dataclass
class Rendered:
    """One run of render.yml: its exit status, output, and where it wrote each host's files."""

    returncode: int
    stdout: str
    root: Path

    def host(self, name: str) -> Path:
        return self.root / name

    def unit(self, host: str, name: str) -> str:
        return (self.host(host) / "etc" / "systemd" / "system" / name).read_text()

    def failure(self) -> str:
        """The messages of the failed tasks (the json callback's document)."""
        doc = json.loads(self.stdout)
        tasks = [t for play in doc["plays"] for t in play["tasks"]]
        failed = [h for t in tasks for h in t["hosts"].values() if h.get("failed")]
        items = [i for h in failed for i in h.get("results", []) if i.get("failed")]
        return " ".join(str(r.get("msg", "")) for r in failed + items)


def render(
    tmp_path: Path,
    os_release: str = "Debian 12",
    inventories: list[Path] = (),
    limit: str | None = None,
    **extra,
) -> Rendered:
    """render.yml for the bare-metal example (plus *inventories*, only *limit*'s hosts) as machines
    running *os_release*, with *extra* variables (``gpu_scenario_host_facts``: facts of single hosts)."""
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps(MODEL_CONFIG))
    root = tmp_path / "rendered"
    variables = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "gpu_scenario_facts": {**NODE_FACTS, **OS_FACTS[os_release]},
        "kvstack_render_base": str(root),
        "vllm_model_path": str(model),
        **extra,
    }
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_NOCOLOR": "1",
    }
    cmd = [
        str(Path(sys.executable).with_name("ansible-playbook")),
        str(PLAYBOOK),
        "-i",
        str(EXAMPLE),
        *(a for inv in inventories for a in ("-i", str(inv))),
        "--vault-password-file",
        str(VAULT_PASS),
        *(("--limit", limit) if limit else ()),
        "-e",
        json.dumps(variables),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, text=True, capture_output=True, timeout=300)
    assert proc.stdout.lstrip().startswith("{"), proc.stdout[-3000:] + proc.stderr[-3000:]
    return Rendered(proc.returncode, proc.stdout, root)


def exec_start(unit_text: str) -> list[str]:
    """The argv of a unit's last ExecStart= line, as systemd splits it (%% and $$ undone)."""
    line = [ln for ln in unit_text.splitlines() if ln.startswith("ExecStart=") and ln != "ExecStart="][-1]
    return [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(line.removeprefix("ExecStart="))]


def lmcache_server_args(unit_text: str) -> list[str]:
    """What ``lmcache server`` gets from lmcache.service (the unit runs it through the launcher:
    ``python -m kvstack_node.lmcache_launch server ARGS``)."""
    argv = exec_start(unit_text)
    assert argv[1:4] == ["-m", "kvstack_node.lmcache_launch", "server"], argv[:4]
    return argv[4:]


TP_SCENARIO = {
    "vllm_instances": [
        {"name": "tp01", "port": 8000, "gpus": "0,1", "tensor_parallel_size": 2},
        {"name": "tp23", "port": 8001, "gpus": "2,3", "tensor_parallel_size": 2},
    ],
    "dynamo_enabled": True,
    "dynamo_worker_gpus": "4",
    "gpu_scenario_host_facts": {"grace01": {"architecture": "aarch64"}},
}
