"""Addresses of the inventory's hosts as the node checks use them."""

from __future__ import annotations


def access_address(hostvars: dict) -> str:
    """The address clients use for a host (roles/kvstack_defaults' kvstack_access_addresses, as
    far as the inventory alone says: its access_address, else its ansible_host)."""
    return hostvars.get("access_address") or hostvars["ansible_host"]


def kv_access(inv) -> tuple[str, int]:
    """Where the KV server's clients connect: the first kv host's access address and its own
    kv_port (roles/kvstack_defaults' kv_access_address / kv_access_port; default port 6666)."""
    kv = next(iter(inv.hosts("kv").values()))
    return access_address(kv), int(kv.get("kv_port", 6666))
