"""What the converge tests drive: an inventory for the test hosts, ansible-playbook runs, and copies
of the source tree at other versions (a newer build, a deliberately broken one)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from azurite import ACCOUNT, CONTAINER, Azurite
from conftest import ANSIBLE_DIR, REPO, TIMINGS, ops_bin
from oidc_stub import OidcStub
from testhost import TestHost, booted_hosts

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
    """The inventory, vault and build directory of one converge run against its test hosts.

    `groups` names the hosts of each inventory group (postgresql, palisade); `site` overrides the
    single-host settings below (where PostgreSQL listens, whom it admits, where the app finds it)."""

    def __init__(self, workdir: Path, hosts: dict[str, TestHost], env: dict[str, str], *,
                 groups: dict[str, list[str]] | None = None, site: dict | None = None) -> None:
        self.workdir = workdir
        self.hosts = hosts
        self.host = next(iter(hosts.values()))  # the single-host tests' one host
        self.groups = groups or {"postgresql": list(hosts), "palisade": list(hosts)}
        self.site = site or {}
        self.env = dict(env, ANSIBLE_SSH_CONTROL_PATH_DIR=str(workdir / "cp"), ANSIBLE_LOCAL_TEMP=str(workdir / "tmp"),
                        ANSIBLE_HOME=str(workdir / "ansible-home"))
        self.inventory = workdir / "inventory"
        self.vault_password_file = workdir / "vault-password"
        self.build_dir = workdir / "build"
        # An address on the host side of the test network that is neither a host nor an admin network.
        network = self.host.network
        self.outsider = str(ipaddress.ip_network(f"{network.host_ip}/{network.prefix}", strict=False).broadcast_address - 1)
        self.app_password = secrets.token_urlsafe(24)
        self.admin_password = secrets.token_urlsafe(24) + "/+@:"  # characters a URL must escape
        self.turnstile_secret = "0x4AAAAAAA" + secrets.token_hex(8)
        self.backup_passphrase = secrets.token_urlsafe(32)
        # The off-host backup repository: Azure Blob Storage (Azurite) on the host side of the test network.
        self.azurite = Azurite(workdir, self.host.host_ip).start()
        # Every secret the inventory ever held (passwords before a rotation too): none may reach a log.
        self.secrets_set: list[str] = [self.app_password, self.admin_password, self.turnstile_secret,
                                       self.backup_passphrase, self.azurite.key]
        # The issuer's discovery document and keys, served on the host side of the test network.
        self.idp = OidcStub(ISSUER, self.host.host_ip)
        self.runs: list[PlaybookRun] = []
        # Versions installed so far, oldest first, and the source tree of the newest good build.
        self.versions: list[str] = [current_version()]
        self.newer_source: Path | None = None

    def write_inventory(self) -> None:
        group_vars = self.inventory / "group_vars" / "all"
        group_vars.mkdir(parents=True)
        host_vars = {name: {
            "ansible_host": host.ip,
            "ansible_user": "deploy",
            "ansible_ssh_private_key_file": str(host.key),
            "ansible_ssh_common_args": " ".join(host.ssh_args()[2:]),
        } for name, host in self.hosts.items()}
        children: dict[str, dict] = {}
        for group, names in self.groups.items():
            children[group] = {"hosts": {name: host_vars.pop(name, None) for name in names}}
        hosts = {"all": {"children": children}}
        (self.inventory / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
        # The example's settings, as an operator would copy them, then this site's differences.
        shutil.copy(ANSIBLE_DIR / "inventories/example/group_vars/all/vars.yml", group_vars / "vars.yml")
        site = {
            "postgresql_listen_addresses": ["localhost"],
            "postgresql_hba_app_networks": ["127.0.0.1/32"],
            # The test runner, on the host side of the test network, is the admin network; another
            # address there (the firewall test adds it) may reach one more port, nothing else.
            "firewall_admin_networks": [f"{self.host.host_ip}/32"],
            "firewall_extra_inbound": [{"port": FIREWALL_EXTRA_PORT, "networks": [f"{self.outsider}/32"]}],
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
            **self.site,
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



@contextlib.contextmanager
def lab_on(workdir: Path, env: dict[str, str], names: list[str], **groups: list[str]) -> Iterator[Lab]:
    """A Lab on freshly booted hosts `names` (groups by name: postgresql=[...], palisade=[...]; by
    default every host in both), with each playbook run's time and recap, and the total, reported
    at the end of the session; everything stopped afterwards. Set `lab.site`, then write_inventory()."""
    started = time.monotonic()
    with booted_hosts(workdir, TIMINGS.append, names) as hosts:
        lab = Lab(workdir, hosts, env, groups=groups or None)
        try:
            yield lab
        finally:
            lab.close()
        for run in lab.runs:
            TIMINGS.append(f"{run.playbook} ({run.log.name}): {run.seconds:.0f}s, recap {run.recap}")
    TIMINGS.append(f"{workdir.name}: {len(names)} host(s), {time.monotonic() - started:.0f}s in all; logs in {workdir}")

# --- HTTPS to a test host's nginx, as a client would ---------------------------------------------


def parse_http(data: bytes) -> tuple[int, dict[str, list[str]], str]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(lines[0].split()[1]), headers, body.decode(errors="replace")


def tls_connection(host: TestHost, *, timeout: float = 15) -> ssl.SSLSocket:
    """A TLS 1.3 connection to the host's nginx, its certificate verified for SERVER_NAME."""
    cert = host.ssh("sudo cat /etc/nginx/tls/server.crt").stdout
    context = ssl.create_default_context(cadata=cert)
    raw = socket.create_connection((host.ip, 443), timeout=timeout)
    return context.wrap_socket(raw, server_hostname=SERVER_NAME)


def read_response(conn: socket.socket) -> tuple[int, dict[str, list[str]], str]:
    """One HTTP/1.1 response, read to the end of its Content-Length (the connection may stay open)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"the connection closed before a whole response arrived: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head)[1])
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, "the connection closed in the middle of the body"
        body += chunk
    return parse_http(head + b"\r\n\r\n" + body)


def https_request(host: TestHost, raw: bytes) -> tuple[int, dict[str, list[str]], str]:
    with tls_connection(host) as conn:
        conn.sendall(raw)
        return read_response(conn)


def api(host: TestHost, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    """One API call through nginx with a bearer token from the test's OpenID Provider."""
    payload = json.dumps(body).encode() if body is not None else b""
    head = (f"{method} /api/v1{path} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n"
            f"Authorization: Bearer {token}\r\nIdempotency-Key: {uuid.uuid4()}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
    status, _, text = https_request(host, head.encode() + payload)
    return status, json.loads(text) if text else {}


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


FIREWALL_EXTRA_PORT = 9999
PROBE_REVISION = "9900_ansible_upgrade_probe"
PROBE_COMMENT = "upgraded by the Ansible converge test"


def source_copy(dest: Path, *, version: str, base: Path = REPO, probe_migration: bool = False, broken: bool = False,
                needs_stop: str | None = None, probe_revision: str = PROBE_REVISION) -> Path:
    """A copy of the source tree (tracked and untracked, not ignored) at `version`.

    probe_migration adds a harmless migration (a table comment) named `probe_revision` so the upgrade
    has one to apply, declared a contract step with `needs_stop`; broken makes the API fail at start
    (import of app.main) while migrations and doctor still work.
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
        (dest / f"migrations/versions/2099_01_01_0000-{probe_revision}.py").write_text(
            f'"""Ansible upgrade probe: a table comment, so an upgrade has a migration to apply."""\n\n'
            f"from alembic import op\n\n"
            f'revision = "{probe_revision}"\ndown_revision = "{head}"\nbranch_labels = None\ndepends_on = None\n'
            + (f"needs_stop = {needs_stop!r}\n" if needs_stop else "") + "\n\n"
            f"def upgrade() -> None:\n    op.execute(\"COMMENT ON TABLE tenants IS '{PROBE_COMMENT}'\")\n\n\n"
            f'def downgrade() -> None:\n    op.execute("COMMENT ON TABLE tenants IS NULL")\n'
        )
    if broken:
        main = dest / "app/main.py"
        main.write_text(main.read_text() + '\n\nraise RuntimeError("deliberately broken build (Ansible rollback test)")\n')
    return dest
