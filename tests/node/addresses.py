"""Addresses of the inventory's hosts as the node checks use them."""

from __future__ import annotations


def access_address(hostvars: dict) -> str:
    """The address clients use for a host (roles/kvstack_defaults' kvstack_access_addresses, as
    far as the inventory alone says: its access_address, else its ansible_host)."""
    return hostvars.get("access_address") or hostvars["ansible_host"]


def kv_nodes(inv) -> list[tuple[str, int]]:
    """Every kv host's access address and kv_port (roles/kvstack_defaults' kv_access_nodes): the
    one KV server, or each member of a sharded tier."""
    return [(access_address(h), int(h.get("kv_port", 6666))) for h in inv.hosts("kv").values()]
