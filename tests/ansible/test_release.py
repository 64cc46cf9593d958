"""scripts/release: signed, reproducible bundles from a clean tagged tree, and what it refuses.

The bundles are real: the wheel built from `git archive` of the tag, the wheelhouse and the Debian
packages downloaded from PyPI and the Debian archive (cached under /var/cache/palisade-release),
signed with minisign keys made here (fixtures in conftest.py, helpers in release_lab.py).
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile

import pytest
import yaml
from conftest import REPO
from release_lab import git, pack, project_version, release, run, scratch_repo, sha256, tampered_copy, verify

pytestmark = pytest.mark.release


def wheel_name(version: str) -> str:
    return f"palisade-{version}-py3-none-any.whl"


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class TestBuild:
    def test_the_bundle_is_named_for_the_version_and_target(self, release_bundle):
        assert release_bundle.name == f"palisade-{project_version()}-debian12-amd64.tar"

    def test_two_builds_of_one_tag_give_the_same_digest(self, release_repo, release_bundle, release_keys, tmp_path):
        repo = tmp_path / "clone"  # another checkout of the same tag
        run("git", "clone", "-q", "--branch", f"v{project_version()}", str(release_repo), str(repo), cwd=tmp_path)
        again = release(repo, "build", "--key", f"{release_keys['vendor']}.sec", "--out", str(tmp_path / "out"))
        [rebuilt] = (tmp_path / "out").glob("*.tar")
        assert sha256(rebuilt) == sha256(release_bundle)
        assert again.stdout.split()[0] == sha256(release_bundle)

    def test_it_holds_the_wheel_wheelhouse_migrations_and_debian_packages(self, release_unpacked):
        assert (release_unpacked / wheel_name(project_version())).is_file()
        lock = (release_unpacked / "requirements.lock").read_text()
        assert not re.search(r"(?m)^--", lock), "the bundle's lock must not carry this machine's index options"
        locked = {normalized(line.split("==")[0]) for line in lock.splitlines() if "==" in line}
        wheels = {normalized(w.name.split("-")[0]) for w in (release_unpacked / "wheels").glob("*.whl")}
        assert locked and locked <= wheels, f"locked but not in the wheelhouse: {sorted(locked - wheels)}"
        assert (release_unpacked / "migrations/env.py").is_file()
        assert any((release_unpacked / "migrations/versions").glob("*.py"))
        packages = "\n" + (release_unpacked / "debian/Packages").read_text()
        for name in ("nginx", "postgresql-15", "python3-venv", "python3.11-venv", "libc6"):
            assert f"\nPackage: {name}\n" in packages, f"{name} is missing from the bundle's Debian packages"

    def test_the_sbom_covers_the_app_its_python_dependencies_and_the_debian_packages(self, release_unpacked):
        bom = json.loads((release_unpacked / "sbom.cdx.json").read_text())
        assert bom["bomFormat"] == "CycloneDX"
        app = bom["metadata"]["component"]
        assert (app["name"], app["version"]) == ("palisade", project_version())
        assert app["hashes"] == [{"alg": "SHA-256", "content": sha256(release_unpacked / wheel_name(project_version()))}]
        purls = {c.get("purl", "") for c in bom["components"]}
        assert any(p.startswith("pkg:pypi/fastapi@") for p in purls)
        debs = sorted(release_unpacked.glob("debian/*.deb"))
        assert len([p for p in purls if p.startswith("pkg:deb/debian/")]) == len(debs)
        assert any(p.startswith("pkg:deb/debian/postgresql-15@") for p in purls)

    def test_the_manifest_lists_every_file_and_verifies_with_minisign(self, release_unpacked, release_keys):
        listed = {line.split("  ", 1)[1] for line in (release_unpacked / "SHA256SUMS").read_text().splitlines()}
        present = {p.relative_to(release_unpacked).as_posix() for p in release_unpacked.rglob("*") if p.is_file()}
        assert listed == present - {"SHA256SUMS", "SHA256SUMS.minisig"}
        run("minisign", "-V", "-p", f"{release_keys['vendor']}.pub", "-m", "SHA256SUMS", cwd=release_unpacked)
        run("sha256sum", "--check", "--strict", "--quiet", "SHA256SUMS", cwd=release_unpacked)

    def test_members_have_sorted_names_fixed_owners_and_one_time(self, release_bundle):
        with tarfile.open(release_bundle) as tar:
            members = tar.getmembers()
        assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "", "")}
        assert len({m.mtime for m in members}) == 1
        assert [m.name for m in members] == sorted(m.name for m in members)


class TestBuildRefuses:
    def test_a_dirty_tree(self, release_keys, tmp_path):
        dirty = scratch_repo(tmp_path / "dirty")
        (dirty / "README.md").write_text((dirty / "README.md").read_text() + "\nlocal edit\n")
        result = release(dirty, "build", "--key", f"{release_keys['vendor']}.sec", "--out", str(tmp_path / "out"),
                         check=False)
        assert result.returncode != 0
        assert "uncommitted changes" in result.stderr
        assert not (tmp_path / "out").exists()

    def test_an_untagged_commit(self, release_keys, tmp_path):
        untagged = scratch_repo(tmp_path / "untagged")
        (untagged / "README.md").write_text((untagged / "README.md").read_text() + "\nafter the tag\n")
        git(untagged, "commit", "-q", "-am", "after the tag")
        result = release(untagged, "build", "--key", f"{release_keys['vendor']}.sec", "--out", str(tmp_path / "out"),
                         check=False)
        assert result.returncode != 0
        assert f"is not tagged v{project_version()}" in result.stderr
        assert not (tmp_path / "out").exists()

    def test_an_existing_version_with_another_digest(self, release_keys, release_bundle, tmp_path):
        out = tmp_path / "out"
        out.mkdir()
        shutil.copy2(release_bundle, out / release_bundle.name)
        moved = scratch_repo(tmp_path / "moved")
        (moved / "README.md").write_text((moved / "README.md").read_text() + "\nsame version, other bytes\n")
        git(moved, "commit", "-q", "-am", "same version, other bytes")
        git(moved, "tag", "-f", f"v{project_version()}")
        result = release(moved, "build", "--key", f"{release_keys['vendor']}.sec", "--out", str(out), check=False)
        assert result.returncode != 0
        assert "exists with another digest" in result.stderr
        assert sha256(out / release_bundle.name) == sha256(release_bundle)


# One member of each kind the bundle holds: a flipped byte in any of them must fail verification.
MEMBERS = ["SHA256SUMS", "SHA256SUMS.minisig", "{wheel}", "wheels/{first_wheel}", "requirements.lock",
           "migrations/env.py", "debian/Packages", "debian/{first_deb}", "sbom.cdx.json"]


class TestVerify:
    def test_a_good_bundle_verifies(self, release_bundle, release_keys, tmp_path):
        result = verify(release_bundle, release_keys["vendor"], tmp_path / "v")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["version"] == project_version()
        assert json.loads(result.stdout)["sha256"] == sha256(release_bundle)

    def test_a_bundle_signed_by_another_key_is_refused(self, release_bundle, release_keys, tmp_path):
        result = verify(release_bundle, release_keys["other"], tmp_path / "v")
        assert result.returncode != 0
        assert "not signed by the release key" in result.stderr
        assert not (tmp_path / "v").exists()

    @pytest.mark.parametrize("member", MEMBERS)
    def test_a_flipped_byte_in_any_member_is_refused(self, release_unpacked, release_keys, tmp_path, member):
        copy = tampered_copy(release_unpacked, tmp_path)
        name = member.format(wheel=wheel_name(project_version()),
                             first_wheel=sorted(p.name for p in (copy / "wheels").iterdir())[0],
                             first_deb=sorted(p.name for p in (copy / "debian").glob("*.deb"))[0])
        data = bytearray((copy / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (copy / name).write_bytes(bytes(data))
        result = verify(pack(copy), release_keys["vendor"], tmp_path / "v")
        assert result.returncode != 0
        assert "palisade-bundle-verify: refused" in result.stderr
        assert not (tmp_path / "v").exists()

    def test_an_added_file_is_refused(self, release_unpacked, release_keys, tmp_path):
        copy = tampered_copy(release_unpacked, tmp_path)
        (copy / "wheels/extra-1.0-py3-none-any.whl").write_bytes(b"not in the manifest")
        result = verify(pack(copy), release_keys["vendor"], tmp_path / "v")
        assert result.returncode != 0
        assert "not in SHA256SUMS: wheels/extra-1.0-py3-none-any.whl" in result.stderr

    def test_a_removed_file_is_refused(self, release_unpacked, release_keys, tmp_path):
        copy = tampered_copy(release_unpacked, tmp_path)
        (copy / "requirements.lock").unlink()
        result = verify(pack(copy), release_keys["vendor"], tmp_path / "v")
        assert result.returncode != 0
        assert "missing from the bundle: requirements.lock" in result.stderr

    def test_a_link_member_is_refused(self, release_unpacked, release_keys, tmp_path):
        copy = tampered_copy(release_unpacked, tmp_path)
        (copy / "escape").symlink_to("/etc/passwd")
        result = verify(pack(copy), release_keys["vendor"], tmp_path / "v")
        assert result.returncode != 0
        assert "is not a plain file or directory" in result.stderr


class TestDebianPackagesOffline:
    def test_the_roles_packages_install_from_the_bundle_alone_with_no_network(self, release_unpacked, tmp_path):
        """A Debian 12 minbase root with no network (only loopback) and the bundle as its only apt source."""
        from testhost import ensure_rootfs, ensure_tools

        ensure_tools()
        root = tmp_path / "root"
        run("cp", "-a", "--reflink=auto", str(ensure_rootfs(print)), str(root), cwd=tmp_path)
        for listing in (root / "etc/apt/sources.list.d").glob("*"):
            listing.unlink()
        # trusted=yes: the bundle's own signature and manifest vouch for these files (verified first).
        (root / "etc/apt/sources.list").write_text("deb [trusted=yes] file:/srv/bundle/debian ./\n")
        # No service starts inside the root (as in any chroot install).
        (root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
        (root / "usr/sbin/policy-rc.d").chmod(0o755)
        wanted = sorted({name for path in (REPO / "ansible/roles").glob("*/vars/Debian.yml")
                         for key, value in (yaml.safe_load(path.read_text()) or {}).items()
                         if key.endswith("_packages") for name in value})
        names = " ".join(wanted)
        script = (
            "echo \"routes:[$(ip route; ip -6 route | grep -v '^fe80\\|^::1')]\"; apt-get update -q"
            f" && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {names}"
            f" && dpkg-query -W -f '${{Package}} ${{Status}}\\n' {names}"
        )
        result = run("systemd-nspawn", "-q", "--register=no", "--keep-unit", "--private-network", "-M", "palisade-offline",
                     "-D", str(root), f"--bind-ro={release_unpacked / 'debian'}:/srv/bundle/debian",
                     "/bin/sh", "-c", script, cwd=tmp_path, check=False)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "routes:[]" in result.stdout, "the root must have no route at all"
        installed = {line.split()[0] for line in result.stdout.splitlines() if line.endswith("install ok installed")}
        assert set(wanted) <= installed, f"not installed: {sorted(set(wanted) - installed)}"
        assert (root / "usr/sbin/nginx").is_file() and (root / "usr/lib/postgresql/15/bin/postgres").is_file()
