"""Fixtures of the Ansible tests: where the repository, the playbooks and the ops tools are."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"


def ops_bin() -> Path:
    """The bin directory of the Python running these tests: the ops virtualenv with ansible-core."""
    return Path(sys.executable).parent


@pytest.fixture(scope="session")
def ansible_env() -> dict[str, str]:
    """The environment for ansible-* commands: the ops tools first on PATH, no colours, no retries."""
    bin_dir = ops_bin()
    if not (bin_dir / "ansible-playbook").exists():
        pytest.fail(f"ansible-playbook is not beside {sys.executable}: run the tests with .venv-ops/bin/python "
                    "(python3 -m venv .venv-ops && .venv-ops/bin/pip install --require-hashes -r ansible/requirements.lock)")
    env = dict(os.environ)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        PY_COLORS="0",
    )
    return env


# Lines the converge test reports (host boot, each playbook run, total), printed after the run.
TIMINGS: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:
    if TIMINGS:
        terminalreporter.section("Ansible converge timings")
        for line in TIMINGS:
            terminalreporter.write_line(line)


# --- release bundles (scripts/release), shared by test_release.py and test_release_role.py --------


@pytest.fixture(scope="session")
def release_keys(tmp_path_factory) -> dict[str, Path]:
    """The vendor's release key and another one (minisign key pairs, base path without .pub/.sec)."""
    from release_lab import keypair

    where = tmp_path_factory.mktemp("keys")
    return {name: keypair(where, name) for name in ("vendor", "other")}


@pytest.fixture(scope="session")
def release_repo(tmp_path_factory) -> Path:
    """A scratch repository of this working tree, committed and tagged v<version>."""
    from release_lab import scratch_repo

    return scratch_repo(tmp_path_factory.mktemp("release") / "repo")


@pytest.fixture(scope="session")
def release_bundle(release_repo, release_keys, tmp_path_factory) -> Path:
    """A bundle built by scripts/release from release_repo."""
    from release_lab import release

    out = tmp_path_factory.mktemp("out")
    release(release_repo, "build", "--key", f"{release_keys['vendor']}.sec", "--out", str(out))
    [built] = out.glob("*.tar")
    return built


@pytest.fixture(scope="session")
def release_unpacked(release_bundle, tmp_path_factory) -> Path:
    import tarfile

    where = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(release_bundle) as tar:
        tar.extractall(where, filter="data")
    [top] = where.iterdir()
    return top
