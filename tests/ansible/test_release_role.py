"""site.yml and upgrade.yml with palisade_release_bundle: the bundle is verified on the control node first.

The inventory's hosts are an address where nothing listens: a host that the run tried to reach
shows as UNREACHABLE. A refused bundle stops the run before any host is contacted; a good one
passes, and only then does the run go on to the hosts.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ANSIBLE_DIR, ops_bin
from release_lab import pack, project_version, sha256, tampered_copy

pytestmark = pytest.mark.release


def site(bundle: Path, key: Path, where: Path, ansible_env: dict[str, str],
         playbook: str = "site.yml") -> subprocess.CompletedProcess[str]:
    nowhere = {"ansible_host": "127.0.0.1", "ansible_port": 9, "ansible_user": "nobody"}
    inventory = {"all": {
        "children": {"palisade": {"hosts": {"app1": nowhere}}, "postgresql": {"hosts": {"db1": nowhere}}},
        "vars": {"palisade_release_bundle": str(bundle),
                 "palisade_release_public_key": Path(f"{key}.pub").read_text().splitlines()[1],
                 "palisade_build_dir": str(where / "build")}}}
    (where / "hosts.yml").write_text(yaml.safe_dump(inventory))
    return subprocess.run([str(ops_bin() / "ansible-playbook"), "-i", str(where / "hosts.yml"), playbook],
                          cwd=ANSIBLE_DIR, env=ansible_env, capture_output=True, text=True, timeout=600)


class TestSiteVerifiesTheBundleFirst:
    @pytest.mark.parametrize("playbook", ["site.yml", "upgrade.yml"])
    def test_a_tampered_bundle_is_refused_before_any_host_is_contacted(self, release_unpacked, release_keys, tmp_path,
                                                                       ansible_env, playbook):
        copy = tampered_copy(release_unpacked, tmp_path)
        wheel = copy / f"palisade-{project_version()}-py3-none-any.whl"
        wheel.write_bytes(wheel.read_bytes() + b"\0")
        result = site(pack(copy), release_keys["vendor"], tmp_path, ansible_env, playbook)
        assert result.returncode != 0
        assert "Refused the release bundle" in result.stdout, result.stdout
        assert f"{wheel.name} does not match its SHA-256 in SHA256SUMS" in result.stdout
        assert "Nothing was changed on any host" in result.stdout
        assert "UNREACHABLE" not in result.stdout, result.stdout
        assert not any((tmp_path / "build/verified").glob("*"))

    def test_a_bundle_signed_by_another_key_is_refused(self, release_bundle, release_keys, tmp_path, ansible_env):
        result = site(release_bundle, release_keys["other"], tmp_path, ansible_env)
        assert result.returncode != 0
        assert "not signed by the release key" in result.stdout, result.stdout
        assert "UNREACHABLE" not in result.stdout, result.stdout

    def test_a_good_bundle_passes_and_the_run_goes_on_to_the_hosts(self, release_bundle, release_keys, tmp_path,
                                                                   ansible_env):
        result = site(release_bundle, release_keys["vendor"], tmp_path, ansible_env)
        verified = f"Verified palisade {project_version()} (bundle sha256 {sha256(release_bundle)})"
        assert verified in result.stdout, result.stdout
        # Past the verification, the next play reaches for the database host (which is not there).
        assert "UNREACHABLE" in result.stdout, result.stdout
        unpacked = tmp_path / "build/verified" / release_bundle.stem / release_bundle.stem
        wheel = unpacked / f"palisade-{project_version()}-py3-none-any.whl"
        assert wheel.is_file()


class TestTheVerifiedBundleInstalls:
    def test_its_wheel_and_wheelhouse_install_with_no_index(self, release_bundle, release_keys, tmp_path, ansible_env):
        """build.yml then install.yml on this Debian 12 machine (connection local), into scratch directories."""
        playbook = [{
            "name": "Install from the release bundle into a scratch directory",
            "hosts": "localhost", "connection": "local", "gather_facts": False,
            "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}",
                     "palisade_release_bundle": str(release_bundle),
                     "palisade_release_public_key": Path(f"{release_keys['vendor']}.pub").read_text().splitlines()[1],
                     "palisade_build_dir": str(tmp_path / "build"), "palisade_python": "/usr/bin/python3",
                     "palisade_staging_dir": str(tmp_path / "staging")},
            "tasks": [
                {"name": "Verify the bundle and name the artifacts",
                 "ansible.builtin.include_role": {"name": "palisade", "tasks_from": "build"}},
                {"name": "Install the release", "ansible.builtin.include_role": {"name": "palisade", "tasks_from": "install"},
                 "vars": {"palisade_install_dir": str(tmp_path / "release")}},
            ]}]
        (tmp_path / "install.yml").write_text(yaml.safe_dump(playbook, sort_keys=False))
        result = subprocess.run([str(ops_bin() / "ansible-playbook"), "-i", "localhost,", str(tmp_path / "install.yml")],
                                cwd=ANSIBLE_DIR, env=ansible_env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-5000:]
        assert f"Verified palisade {project_version()}" in result.stdout
        installed = subprocess.run([str(tmp_path / "release/bin/python"), "-c",
                                    "import importlib.metadata as m; print(m.version('palisade'))"],
                                   capture_output=True, text=True, timeout=60)
        assert installed.stdout.strip() == project_version()
        assert (tmp_path / "release/.palisade-release").read_text().strip() == project_version()
        # Nothing was built or downloaded: the wheel and the wheelhouse came from the verified bundle.
        assert not (tmp_path / "build/wheels").exists() and not (tmp_path / "build/wheelhouse").exists()
