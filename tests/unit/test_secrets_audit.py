"""Secrets audit over every role and playbook: a task whose arguments, loop or rendered
template touch a secret has ``no_log: true``, and a rendered file holding one is not
world-readable. Secrets are the argument_specs options marked ``no_log``, the inventory's
``kv_password``/``vllm_api_key``/``dynamo_nats_password``/``dynamo_etcd_password``/``vault_*``,
every role default derived from one, and every fact a ``no_log`` task sets from one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kvstack import REPO

INVENTORY_SECRETS = {"kv_password", "vllm_api_key", "dynamo_nats_password", "dynamo_etcd_password"}
# Task keys that never reach the log (conditions, names, handlers to notify).
SILENT_KEYS = {
    "name",
    "when",
    "tags",
    "notify",
    "register",
    "changed_when",
    "failed_when",
    "no_log",
    "listen",
}
TASK_FILES = sorted(
    [*REPO.glob("roles/*/tasks/*.yml"), *REPO.glob("roles/*/handlers/*.yml"), *REPO.glob("playbooks/*.yml")]
)


def _words(text: str) -> set[str]:
    """Names used in the Jinja expressions of text (plain words in a message are not a use)."""
    exprs = re.findall(r"\{\{.*?\}\}|\{%.*?%\}", text, flags=re.S)
    return set(re.findall(r"\b[a-z_][a-z0-9_]*\b", " ".join(exprs)))


def _secret_names() -> set[str]:
    names = set(INVENTORY_SECRETS)
    for spec in REPO.glob("roles/*/meta/argument_specs.yml"):
        for entry in (yaml.safe_load(spec.read_text())["argument_specs"] or {}).values():
            names |= {k for k, v in (entry.get("options") or {}).items() if v.get("no_log")}
    defaults = {}
    for path in REPO.glob("roles/*/defaults/main.yml"):
        defaults.update(yaml.safe_load(path.read_text()) or {})
    changed = True
    while changed:  # defaults and facts derived from a secret are secrets too
        changed = False
        derived = {k for k, v in defaults.items() if _words(str(v)) & names and k not in names}
        for path in TASK_FILES:
            for task in _tasks(yaml.safe_load(path.read_text()) or []):
                facts = task.get("ansible.builtin.set_fact")
                if isinstance(facts, dict) and _words(str(facts)) & names:
                    derived |= set(facts) - names
        if derived:
            names |= derived
            changed = True
    return names


def _tasks(node) -> list[dict]:
    """Every task in a task file or playbook, blocks and plays unrolled."""
    out: list[dict] = []
    if isinstance(node, list):
        for item in node:
            out += _tasks(item)
    elif isinstance(node, dict):
        nested = [
            node[k]
            for k in ("tasks", "pre_tasks", "post_tasks", "handlers", "block", "rescue", "always")
            if k in node
        ]
        if nested:
            for n in nested:
                out += _tasks(n)
        elif "hosts" not in node and "ansible.builtin.import_playbook" not in node:
            out.append(node)
    return out


def _template_source(path: Path, task: dict) -> str:
    args = task.get("ansible.builtin.template")
    if not isinstance(args, dict) or "{{" in str(args.get("src", "")):
        return ""
    src = path.parents[1] / "templates" / args["src"]
    return src.read_text() if src.is_file() else ""


SECRETS = _secret_names()


def test_the_audit_knows_the_secrets():
    # The audit is only as good as its list: it must find the specs' and the derived ones.
    assert {
        "kv_password",
        "redis_server_requirepass",
        "kvrocks_requirepass",
        "lmcache_kv_password",
    } <= SECRETS
    assert {"vllm_api_key", "vllm_endpoints", "lmcache_endpoints"} <= SECRETS


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_tasks_touching_secrets_are_no_log(path: Path):
    leaks = []
    for task in _tasks(yaml.safe_load(path.read_text()) or []):
        if task.get("no_log") is True:
            continue
        if "ansible.builtin.assert" in task:
            # `that` is evaluated, never printed; the message is.
            seen = {k: v for k, v in task["ansible.builtin.assert"].items() if k != "that"}
        else:
            seen = {k: v for k, v in task.items() if k not in SILENT_KEYS}
        touched = (_words(str(seen)) | _words(_template_source(path, task))) & SECRETS
        if touched:
            leaks.append(f"{task.get('name', '?')}: {sorted(touched)}")
    assert not leaks, f"{path.relative_to(REPO)}: tasks touching secrets without no_log: {leaks}"


def test_files_rendered_with_secrets_are_not_world_readable():
    loose = []
    for path in TASK_FILES:
        for task in _tasks(yaml.safe_load(path.read_text()) or []):
            source = _template_source(path, task)
            if _words(source) & SECRETS:
                mode = str(task["ansible.builtin.template"].get("mode", ""))
                if not re.fullmatch(r"0?[0-7][0-7]0", mode):
                    loose.append(f"{path.relative_to(REPO)}: {task.get('name')} mode {mode or 'unset'}")
    assert not loose, loose
