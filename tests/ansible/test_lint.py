"""ansible-lint (production profile) and ansible-playbook --syntax-check over ansible/."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from conftest import ANSIBLE_DIR, ops_bin


def test_ansible_lint_production_profile_is_clean(ansible_env):
    result = subprocess.run(
        [str(ops_bin() / "ansible-lint"), "-c", ".ansible-lint", "--offline", "--nocolor"],
        cwd=ANSIBLE_DIR, env=ansible_env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


@pytest.mark.parametrize("playbook", ["site.yml", "upgrade.yml"])
def test_playbook_syntax(ansible_env, playbook):
    result = subprocess.run(
        [str(ops_bin() / "ansible-playbook"), "--syntax-check", playbook],
        cwd=ANSIBLE_DIR, env=ansible_env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_inventory_keeps_secrets_in_the_vault(ansible_env):
    """Every secret-looking variable of the example inventory is a reference to a vault_* variable."""
    vars_file = ANSIBLE_DIR / "inventories/example/group_vars/all/vars.yml"
    data = yaml.safe_load(vars_file.read_text())
    flat = {name: value for name, value in data.items() if not isinstance(value, dict)}
    flat.update({f"palisade_secrets.{k}": v for k, v in data["palisade_secrets"].items()})
    for name, value in flat.items():
        if any(word in name for word in ("password", "secret", "private_key")) and value:
            assert str(value).strip().startswith("{{ vault_"), f"{name} must reference a vault_* variable"
    example = ANSIBLE_DIR / "inventories/example/group_vars/all/vault.yml.example"
    assert all(key.startswith("vault_") for key in yaml.safe_load(example.read_text()))
