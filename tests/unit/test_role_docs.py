"""Docs match the code: every variable a role defines in ``defaults/main.yml`` is declared in its
``meta/argument_specs.yml`` (so Ansible checks its type) and named in its ``README.md``, and the
specs declare nothing the defaults lack."""

from __future__ import annotations

import pytest
import yaml

from kvstack import REPO

ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "defaults" / "main.yml").is_file())


@pytest.mark.parametrize("role", ROLES)
def test_defaults_specs_and_readme_agree(role):
    d = REPO / "roles" / role
    defaults = set(yaml.safe_load((d / "defaults" / "main.yml").read_text()) or {})
    specs = yaml.safe_load((d / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    options = set(specs["main"].get("options") or {})
    readme = (d / "README.md").read_text()
    assert defaults - options == set(), f"roles/{role}: defaults missing from argument_specs"
    assert options - defaults == set(), f"roles/{role}: argument_specs options without a default"
    assert {v for v in defaults if f"`{v}`" not in readme} == set(), f"roles/{role}/README.md misses"
