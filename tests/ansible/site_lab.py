"""What the converge test drives: an inventory for the test host, ansible-playbook runs, and copies
of the source tree at other versions (a newer build, a deliberately broken one)."""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from azurite import ACCOUNT, CONTAINER, Azurite
from conftest import ANSIBLE_DIR, REPO, ops_bin
from oidc_stub import OidcStub
from testhost import HOSTNAME, TestHost

ISSUER = "https://idp.palisade-test.invalid/realms/palisade"
SERVER_NAME = "palisade-test.example"
PROXY_CLIENT_TIMEOUT_SECONDS = 2
PROXY_KEEPALIVE_TIMEOUT_SECONDS = 2
RECAP = re.compile(r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+"
                   r"failed=(?P<failed>\d+)", re.M)


@dataclass
class PlaybookRun:
    playbook: str
    returncode: int
    output: str
    seconds: float
    log: Path

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        return {m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")} for m in RECAP.finditer(self.output)}

    def changed_tasks(self) -> list[str]:
        """Names of the tasks that reported a change (for a readable idempotence failure)."""
        changed, task = [], None
        for line in self.output.splitlines():
            if line.startswith("TASK ["):
                task = line[6:].split("]")[0]
            elif line.startswith("changed:"):
                changed.append(task or "?")
        return changed

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


class Lab:
    """The inventory, vault and build directory of one converge run against one test host."""

    def __init__(self, workdir: Path, host: TestHost, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.host = host
        self.env = dict(env, ANSIBLE_SSH_CONTROL_PATH_DIR=str(workdir / "cp"), ANSIBLE_LOCAL_TEMP=str(workdir / "tmp"),
                        ANSIBLE_HOME=str(workdir / "ansible-home"))
        self.inventory = workdir / "inventory"
        self.vault_password_file = workdir / "vault-password"
        self.build_dir = workdir / "build"
        self.app_password = secrets.token_urlsafe(24)
        self.admin_password = secrets.token_urlsafe(24) + "/+@:"  # characters a URL must escape
        self.turnstile_secret = "0x4AAAAAAA" + secrets.token_hex(8)
        self.backup_passphrase = secrets.token_urlsafe(32)
        # The off-host backup repository: Azure Blob Storage (Azurite) on the host side of the test network.
        self.azurite = Azurite(workdir, host.host_ip).start()
        # Every secret the inventory ever held (passwords before a rotation too): none may reach a log.
        self.secrets_set: list[str] = [self.app_password, self.admin_password, self.turnstile_secret,
                                       self.backup_passphrase, self.azurite.key]
        # The issuer's discovery document and keys, served on the host side of the test network.
        self.idp = OidcStub(ISSUER, host.host_ip)
        self.runs: list[PlaybookRun] = []
        # Versions installed so far, oldest first, and the source tree of the newest good build.
        self.versions: list[str] = [current_version()]
        self.newer_source: Path | None = None

    def write_inventory(self) -> None:
        group_vars = self.inventory / "group_vars" / "all"
        group_vars.mkdir(parents=True)
        host_vars = {
            "ansible_host": self.host.ip,
            "ansible_user": "deploy",
            "ansible_ssh_private_key_file": str(self.host.key),
            "ansible_ssh_common_args": " ".join(self.host.ssh_args()[2:]),
        }
        hosts = {"all": {"children": {"postgresql": {"hosts": {HOSTNAME: host_vars}},
                                      "palisade": {"hosts": {HOSTNAME: None}}}}}
        (self.inventory / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
        # The example's settings, as an operator would copy them, then this site's differences.
        shutil.copy(ANSIBLE_DIR / "inventories/example/group_vars/all/vars.yml", group_vars / "vars.yml")
        site = {
            "postgresql_listen_addresses": ["localhost"],
            "postgresql_hba_app_networks": ["127.0.0.1/32"],
            "palisade_database_host": "127.0.0.1",
            "palisade_build_dir": str(self.build_dir),
            "palisade_issuers": [{"issuer": ISSUER, "audience": "palisade", "discovery_url": self.idp.discovery_url}],
            "palisade_settings": {"CORS_ALLOW_ORIGINS": f"https://{SERVER_NAME}"},
            "proxy_server_names": [SERVER_NAME],
            # Short, so the converge test sees a silent client and an idle connection dropped quickly.
            "proxy_client_header_timeout_seconds": PROXY_CLIENT_TIMEOUT_SECONDS,
            "proxy_client_body_timeout_seconds": PROXY_CLIENT_TIMEOUT_SECONDS,
            "proxy_keepalive_timeout_seconds": PROXY_KEEPALIVE_TIMEOUT_SECONDS,
            # The example's off-host repository, at Azurite instead of <account>.blob.core.windows.net.
            "postgresql_backup_repo2_azure_account": ACCOUNT,
            "postgresql_backup_repo2_azure_container": CONTAINER,
            "postgresql_backup_repo2_azure_host": self.azurite.address,
            "postgresql_backup_repo2_azure_port": self.azurite.port,
            "postgresql_backup_repo2_ca_certificate": self.azurite.cert.read_text(),
        }
        (group_vars / "zz-site.yml").write_text(yaml.safe_dump(site, sort_keys=False))
        self.vault_password_file.write_text(secrets.token_urlsafe(24) + "\n")
        self.vault_password_file.chmod(0o600)
        self._write_vault()

    def _write_vault(self) -> None:
        vault_file = self.inventory / "group_vars" / "all" / "vault.yml"
        vault = {
            "vault_palisade_db_admin_password": self.admin_password,
            "vault_palisade_db_app_password": self.app_password,
            "vault_palisade_turnstile_secret": self.turnstile_secret,
            "vault_palisade_backup_cipher_passphrase": self.backup_passphrase,
            "vault_palisade_backup_azure_key": self.azurite.key,
        }
        vault_file.write_text(yaml.safe_dump(vault))
        subprocess.run([str(ops_bin() / "ansible-vault"), "encrypt", "--vault-password-file", str(self.vault_password_file),
                        str(vault_file)], check=True, env=self.env, capture_output=True, timeout=60)

    def rotate_database_passwords(self) -> None:
        """New passwords for both database roles in the vault, as an admin rotating them would set."""
        self.app_password = secrets.token_urlsafe(24) + "~!*"
        self.admin_password = secrets.token_urlsafe(24) + "/+@:"
        self.secrets_set += [self.app_password, self.admin_password]
        self._write_vault()

    def close(self) -> None:
        self.idp.close()
        self.azurite.stop()

    def playbook(self, playbook: str, *extra: str, timeout: float = 1200) -> PlaybookRun:
        log = self.workdir / f"{len(self.runs) + 1:02d}-{Path(playbook).stem}.log"
        cmd = [str(ops_bin() / "ansible-playbook"), "-i", str(self.inventory / "hosts.yml"),
               "--vault-password-file", str(self.vault_password_file), playbook, *extra]
        started = time.monotonic()
        with open(log, "w") as out:
            proc = subprocess.run(cmd, cwd=ANSIBLE_DIR, env=self.env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
        run = PlaybookRun(playbook, proc.returncode, log.read_text(), time.monotonic() - started, log)
        self.runs.append(run)
        return run


def current_version() -> str:
    return re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)[1]


def head_revision(source: Path) -> tuple[str, str]:
    """(revision, file stem) of the newest migration in a source tree, read from the files."""
    revisions, parents = {}, set()
    for path in (source / "migrations/versions").glob("*.py"):
        text = path.read_text()
        rev = re.search(r'^revision(?:: str)? = "([^"]+)"', text, re.M)
        down = re.search(r'^down_revision(?:: [^=]+)? = "([^"]+)"', text, re.M)
        if rev:
            revisions[rev[1]] = path.stem
        if down:
            parents.add(down[1])
    heads = [rev for rev in revisions if rev not in parents]
    assert len(heads) == 1, f"expected one migration head, found {heads}"
    return heads[0], revisions[heads[0]]


def _source_files(base: Path) -> list[str]:
    """The files of a source tree: git's view of the repository (tracked and untracked, not ignored),
    or every file of an earlier copy but what a build leaves behind."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=base,
                             capture_output=True)
    if listing.returncode == 0:
        return [name for name in listing.stdout.decode().split("\0") if name]
    skip = {"build", "__pycache__", ".git"}
    return [str(path.relative_to(base)) for path in base.rglob("*")
            if path.is_file() and not skip & set(path.relative_to(base).parts) and ".egg-info" not in str(path)]


PROBE_REVISION = "9900_ansible_upgrade_probe"
PROBE_COMMENT = "upgraded by the Ansible converge test"


def source_copy(dest: Path, *, version: str, base: Path = REPO, probe_migration: bool = False, broken: bool = False) -> Path:
    """A copy of the source tree (tracked and untracked, not ignored) at `version`.

    probe_migration adds a harmless migration (a table comment) so the upgrade has one to apply;
    broken makes the API fail at start (import of app.main) while migrations and doctor still work.
    """
    for name in _source_files(base):
        src = base / name
        if src.is_file() and not name.startswith(("ansible/", "tests/", "bench/", "infra/")):
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    pyproject = dest / "pyproject.toml"
    pyproject.write_text(re.sub(r'^version = "[^"]+"', f'version = "{version}"', pyproject.read_text(), count=1, flags=re.M))
    if probe_migration:
        head, stem = head_revision(dest)
        (dest / f"migrations/versions/2099_01_01_0000-{PROBE_REVISION}.py").write_text(
            f'"""Ansible upgrade probe: a table comment, so an upgrade has a migration to apply."""\n\n'
            f"from alembic import op\n\n"
            f'revision = "{PROBE_REVISION}"\ndown_revision = "{head}"\nbranch_labels = None\ndepends_on = None\n\n\n'
            f"def upgrade() -> None:\n    op.execute(\"COMMENT ON TABLE tenants IS '{PROBE_COMMENT}'\")\n\n\n"
            f'def downgrade() -> None:\n    op.execute("COMMENT ON TABLE tenants IS NULL")\n'
        )
    if broken:
        main = dest / "app/main.py"
        main.write_text(main.read_text() + '\n\nraise RuntimeError("deliberately broken build (Ansible rollback test)")\n')
    return dest
