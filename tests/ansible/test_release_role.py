"""site.yml with palisade_release_bundle: the bundle is verified on the control node before any host.

The inventory's hosts are an address where nothing listens: a host that the run tried to reach
shows as UNREACHABLE. A refused bundle stops the run before any host is contacted; a good one
passes, and only then does the run go on to the hosts.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from conftest import ANSIBLE_DIR, ops_bin
from release_lab import pack, project_version, sha256, tampered_copy


def site(bundle: Path, key: Path, where: Path, ansible_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    nowhere = {"ansible_host": "127.0.0.1", "ansible_port": 9, "ansible_user": "nobody"}
    inventory = {"all": {
        "children": {"palisade": {"hosts": {"app1": nowhere}}, "postgresql": {"hosts": {"db1": nowhere}}},
        "vars": {"palisade_release_bundle": str(bundle),
                 "palisade_release_public_key": Path(f"{key}.pub").read_text().splitlines()[1],
                 "palisade_build_dir": str(where / "build")}}}
    (where / "hosts.yml").write_text(yaml.safe_dump(inventory))
    return subprocess.run([str(ops_bin() / "ansible-playbook"), "-i", str(where / "hosts.yml"), "site.yml"],
                          cwd=ANSIBLE_DIR, env=ansible_env, capture_output=True, text=True, timeout=600)


class TestSiteVerifiesTheBundleFirst:
    def test_a_tampered_bundle_is_refused_before_any_host_is_contacted(self, release_unpacked, release_keys, tmp_path,
                                                                       ansible_env):
        copy = tampered_copy(release_unpacked, tmp_path)
        wheel = copy / f"palisade-{project_version()}-py3-none-any.whl"
        wheel.write_bytes(wheel.read_bytes() + b"\0")
        result = site(pack(copy), release_keys["vendor"], tmp_path, ansible_env)
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
