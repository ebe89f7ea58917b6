"""kvstack: lab, provisioning glue, benchmarks and reports for the KV-cache offloading stack."""

from pathlib import Path

#: Repository root (scripts/kvstack/__init__.py -> repo).
REPO = Path(__file__).resolve().parents[2]
