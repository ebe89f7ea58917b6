"""NVIDIA AIPerf as an independent client: its own virtual environment, the requests our client sent
as its dataset, its command line, and its summary read back in our units.

AIPerf (PyPI ``aiperf``, pinned :data:`VERSION`) lives in ``.venv-aiperf`` beside the controller's
``.venv`` (its dependencies are many and pinned tightly; :func:`ensure` installs it on first use).
Against vLLM's ``/v1/completions`` AIPerf sends one prompt per request and keeps no history, so
the dataset is ``single_turn`` lines that share their conversation's ``session_id``: each holds
the whole prompt our client sent (history included), sent in file order within a session, each
after the previous one returned (:func:`dataset`). Token counts are the server's
(``--use-server-token-count``); AIPerf's per-request "inter token latency" is then
(last - first token) / (output tokens - 1): our TPOT.

AIPerf 0.13.0 treats a local tokenizer path as a hub name when ``HF_HUB_OFFLINE`` or
``TRANSFORMERS_OFFLINE`` is set (upstream PR 1339), so both are removed from its environment; a
local absolute path needs no network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvstack import REPO
from kvstack.log import progress

VERSION = "0.13.0"
VENV = REPO / ".venv-aiperf"
#: the tokenizer files AIPerf's AutoTokenizer reads (the served model's directory has them), and
#: those it reads when present (newer transformers no longer write special_tokens_map.json)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "config.json")
TOKENIZER_FILES_OPTIONAL = ("special_tokens_map.json", "chat_template.jinja")
#: AIPerf's summary metric -> ours, and the statistics compared
METRICS = {"time_to_first_token": "ttft", "inter_token_latency": "tpot"}
STATS = ("p50", "p95")


class AiperfError(RuntimeError):
    """AIPerf could not be installed or did not produce its summary."""


def executable(venv: Path = VENV) -> Path:
    """The ``aiperf`` command of *venv*."""
    return venv / "bin" / "aiperf"


def installed(venv: Path = VENV) -> str | None:
    """The AIPerf version installed in *venv*, or None."""
    py = venv / "bin" / "python"
    if not py.exists():
        return None
    out = subprocess.run(
        [str(py), "-c", "import importlib.metadata as m; print(m.version('aiperf'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or None if out.returncode == 0 else None


def ensure(venv: Path = VENV, log: Path | None = None) -> Path:
    """AIPerf :data:`VERSION` in *venv* (created and installed when missing: a few minutes and
    about 140 packages from PyPI the first time); returns the ``aiperf`` command."""
    if installed(venv) == VERSION:
        return executable(venv)
    progress(f"installing AIPerf {VERSION} into {venv} (first use; several minutes)")
    steps = [[sys.executable, "-m", "venv", str(venv)]] if not (venv / "bin" / "python").exists() else []
    steps.append([str(venv / "bin" / "pip"), "install", "--quiet", f"aiperf=={VERSION}"])
    for cmd in steps:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if log:
            with log.open("a") as f:
                f.write(f"$ {' '.join(cmd)}\n{out.stdout}{out.stderr}\n")
        if out.returncode != 0:
            raise AiperfError(f"{' '.join(cmd[:3])} failed ({out.returncode}): {out.stderr.strip()[-400:]}")
    return executable(venv)


def dataset(sent: Sequence[dict[str, Any]], extra: dict[str, Any] | None = None) -> str:
    """AIPerf ``single_turn`` JSONL of the requests our client sent (``RunResult.sent``): per
    conversation in the order they were first sent, its turns in order, each with its whole prompt,
    its ``max_tokens`` as ``output_length`` and *extra* merged into the request body."""
    order = {c: i for i, c in enumerate(dict.fromkeys(s["conversation"] for s in sent))}
    lines = []
    for s in sorted(sent, key=lambda s: (order[s["conversation"]], s["turn"])):
        line = {"session_id": s["conversation"], "text": s["prompt"], "output_length": s["max_tokens"]}
        if extra:
            line["extra"] = extra
        lines.append(json.dumps(line))
    return "\n".join(lines) + "\n"


def command(
    aiperf: Path,
    *,
    url: str,
    model: str,
    tokenizer: Path,
    concurrency: int,
    sessions: int,
    input_file: Path,
    artifact_dir: Path,
    api_key: str | None = None,
) -> list[str]:
    """``aiperf profile`` against vLLM's completions endpoint, streaming, replaying *input_file*
    (*sessions* sessions, *concurrency* at a time), light on this machine's CPUs."""
    cmd = [
        str(aiperf),
        "profile",
        "--model",
        model,
        "--url",
        url,
        "--endpoint-type",
        "completions",
        "--streaming",
        "--tokenizer",
        str(tokenizer.resolve()),
        "--input-file",
        str(input_file),
        "--custom-dataset-type",
        "single_turn",
        "--conversation-num",
        str(sessions),
        "--concurrency",
        str(concurrency),
        "--use-server-token-count",
        "--artifact-dir",
        str(artifact_dir),
        "--ui",
        "none",
        "--no-server-metrics",
        "--no-gpu-telemetry",
        "--workers-max",
        "1",
        "--record-processors",
        "1",
        "--random-seed",
        "0",
    ]
    return cmd + (["--api-key", api_key] if api_key else [])


def environment() -> dict[str, str]:
    """This process's environment without the offline switches AIPerf 0.13.0 mishandles."""
    return {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}


def run(cmd: list[str], log: Path, timeout_s: float) -> None:
    """Run AIPerf (its output to *log*, secrets never: the API key is masked in the logged line)."""
    shown = ["***" if i and cmd[i - 1] == "--api-key" else c for i, c in enumerate(cmd)]
    with log.open("a") as f:
        f.write("$ " + " ".join(shown) + "\n")
        f.flush()
        try:
            out = subprocess.run(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=environment(), timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise AiperfError(f"AIPerf did not finish in {timeout_s:.0f} s (log: {log})") from e
    if out.returncode != 0:
        raise AiperfError(f"AIPerf exited {out.returncode} (log: {log})")


def _seconds(metric: dict[str, Any], stat: str) -> float | None:
    """One statistic of an AIPerf summary metric in seconds (its ``unit``: ms, us, ns or sec)."""
    value = metric.get(stat)
    if value is None:
        return None
    scale = {"ms": 1e-3, "us": 1e-6, "ns": 1e-9, "sec": 1.0, "s": 1.0}.get(metric.get("unit", "ms"))
    if scale is None:
        raise AiperfError(f"AIPerf metric unit {metric.get('unit')!r} is not a time unit")
    return float(value) * scale


def read_summary(artifact_dir: Path) -> dict[str, Any]:
    """AIPerf's ``profile_export_aiperf.json``: TTFT and TPOT (its per-request ITL) at
    :data:`STATS` in seconds, the requests it counted and its errors."""
    path = artifact_dir / "profile_export_aiperf.json"
    if not path.is_file():
        raise AiperfError(f"AIPerf wrote no {path.name} in {artifact_dir}")
    doc = json.loads(path.read_text())
    out: dict[str, Any] = {
        ours: {stat: _seconds(doc.get(name) or {}, stat) for stat in STATS} for name, ours in METRICS.items()
    }
    out["requests"] = int((doc.get("request_count") or {}).get("avg") or 0)
    out["errors"] = sum(int(e.get("count", 1)) for e in doc.get("error_summary") or [])
    out["version"] = doc.get("aiperf_version")
    return out


def read_requests(artifact_dir: Path) -> dict[str, list[float]]:
    """Per request of AIPerf's profiling phase (``profile_export.jsonl``; cancelled and failed ones
    left out): TTFT and TPOT in seconds, the samples the cross-check's intervals resample."""
    path = artifact_dir / "profile_export.jsonl"
    out: dict[str, list[float]] = {ours: [] for ours in METRICS.values()}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        rec = json.loads(line) if line.strip() else {}
        meta = rec.get("metadata") or {}
        if rec.get("error") or meta.get("was_cancelled") or meta.get("benchmark_phase") != "profiling":
            continue
        for name, ours in METRICS.items():
            v = _seconds((rec.get("metrics") or {}).get(name) or {}, "value")
            if v is not None:
                out[ours].append(v)
    return out
