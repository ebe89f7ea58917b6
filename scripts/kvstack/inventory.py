"""Read an Ansible inventory the way Ansible does (``ansible-inventory --list``)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

from kvstack import REPO

LAB_INVENTORY = REPO / "inventory" / "lab"


class InventoryError(RuntimeError):
    """The inventory could not be read."""


def _ansible_inventory() -> str:
    local = Path(sys.executable).with_name("ansible-inventory")
    found = str(local) if local.exists() else shutil.which("ansible-inventory")
    if not found:
        raise InventoryError("ansible-inventory not found: run ./bootstrap.sh")
    return found


@dataclasses.dataclass
class Inventory:
    """Parsed inventory: hostvars and group membership."""

    path: Path
    data: dict

    def hosts(self, group: str = "all") -> dict[str, dict]:
        """Hosts of *group* (recursively) with their variables, in inventory order."""
        names = self._members(group)
        hostvars = self.data.get("_meta", {}).get("hostvars", {})
        return {n: hostvars.get(n, {}) for n in names}

    def _members(self, group: str) -> list[str]:
        g = self.data.get(group, {})
        out = list(g.get("hosts", []))
        for child in g.get("children", []):
            out += [h for h in self._members(child) if h not in out]
        return out

    def group_vars(self, group: str = "all") -> dict:
        """Variables every host of *group* sees (taken from its first host)."""
        hosts = self.hosts(group)
        return next(iter(hosts.values()), {}) if hosts else {}


def load(path: Path | str) -> Inventory:
    """Run ``ansible-inventory --list`` on *path* and return the result."""
    path = Path(path)
    if not path.exists():
        raise InventoryError(f"inventory {path} does not exist")
    proc = subprocess.run([_ansible_inventory(), "-i", str(path), "--list"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InventoryError(f"ansible-inventory -i {path}: {proc.stderr.strip()}")
    return Inventory(path=path, data=json.loads(proc.stdout))
