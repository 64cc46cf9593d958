"""A local stand-in for Azure Database for PostgreSQL with Microsoft Entra authentication only.

On Azure the app and the migration job log in to PostgreSQL with no password of their own: each
connects, over TLS, as a role mapped to its managed identity and sends as the "password" an Entra
access token for `https://ossrdbms-aad.database.windows.net`. The server checks the token and that
its `oid` is the object id the role was created for with
`pgaadauth_create_principal_with_oid(rolename, objectid, objecttype, isAdmin, isMfa)`.

`EntraPostgres` starts a real private PostgreSQL cluster (`app.db.cluster.LocalCluster`, run as the
`postgres` OS user) that behaves the same way towards a client:

- TCP on 127.0.0.1 (a free port), TLS only (`hostssl`), `ssl_min_protocol_version = TLSv1.3`, a
  server certificate from a `TestPKI` valid for 127.0.0.1. pg_hba.conf has exactly one TCP line and
  it is `pam`: there is no password/md5/scram/trust line over TCP, so a role's own password (even
  if a superuser sets one) never logs anybody in. The Unix socket (directory mode 0700) keeps a
  `trust` path for the superuser only, for the test's own setup.
- The PAM service (`/etc/pam.d/palisade-entra-<random>`, removed by `stop()`) runs a verifier for
  every TCP login. The verifier checks the token as Azure does: RS256 signature with the key of
  the authority's JWKS named by the token's `kid`, `aud` == the ossrdbms resource, `iss`, `tid`,
  `exp`/`nbf` (60 s leeway), and that `oid` is the object id recorded for the PostgreSQL user
  name; with `isMfa` it also wants `mfa` in the `amr` claim.
- Why not `pam_exec.so expose_authtok`: Linux-PAM's pam_exec hands the program at most
  PAM_MAX_RESP_SIZE (512) bytes of the password (`strndupa(authtok, PAM_MAX_RESP_SIZE)`), and an
  Entra token is ~1 KB (measured here: 934 bytes in, 511 out), so the signature would never be
  seen. The helper therefore compiles a small PAM module (gcc + libpam0g-dev, installed with
  apt-get when missing) that does what pam_exec does without the cap: asks PostgreSQL's conversation for the password, runs the
  verifier with the token on stdin and PAM_USER in its environment, and succeeds only on exit 0.
- The verifier is a stdlib-only Python script (it runs as the `postgres` OS user, which cannot
  reach a venv under /root), reading the JWKS and settings from root-owned files the helper writes.
  RS256 is checked the way RFC 8017 (8.2.2) says: the expected EMSA-PKCS1-v1_5 encoding is built
  and compared whole, nothing in the signature is parsed.
- The oid mapping is Azure's security label `aadauth,oid=<objectid>,type=<objecttype>[,admin]`,
  which needs a C label provider; here it is a row in `pgaadauth.principals` (schema and table owned
  by the superuser, nobody else has any privilege on them) in each database where
  `install_pgaadauth` installed the function. The row holds the role's pg_authid oid too and the
  verifier only accepts a row whose role still has that oid (looked up with psql over the socket as
  the superuser), so a role dropped and re-created under the same name is no longer mapped, as a
  dropped label on Azure.
- `pgaadauth_create_principal_with_oid` (in pg_catalog, Azure's signature and return text) creates
  a LOGIN role, NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION, no password (with
  `isAdmin`: CREATEROLE CREATEDB and membership of `azure_pg_admin`) and records the mapping. Only
  a superuser or an Entra administrator may call it (Azure: "Users/roles for which [admin] is
  present in their security label can manage other Microsoft Entra ID roles").
- `add_entra_administrator` stands in for setting the server's Entra admin in ARM/the portal: a
  principal created with `isAdmin` (CREATEROLE, CREATEDB, azure_pg_admin), made owner of the
  given databases (what azure_pg_admin's rights amount to for the app database).

What only Azure shows: the real token validation service (key rollover, v1 `sts.windows.net`
issuers, group membership for `group` principals, `upn`/display-name matching of
`pgaadauth_create_principal`), the real `azure_pg_admin` rights and its reserved roles, server
parameters such as `azure.extensions`, `require_secure_transport`, connection throttling and the
error text Azure returns on a refused token. Here every refusal reads "PAM authentication failed";
the reason is in `auth_log`. The JWKS is the authority's key when the stand-in starts: a key the
authority rotates to later is not picked up.

API::

    pg = EntraPostgres.start(authority, workdir=None, pki=None)
    pg.host, pg.port, pg.ca_file, pg.superuser_url, pg.url(role, database), pg.auth_log
    pg.superuser_execute(sql, *params, database="postgres")
    pg.install_pgaadauth(database)
    pg.create_principal(role, object_id, database="postgres", object_type="service", is_admin=False, is_mfa=False)
    pg.add_entra_administrator(role, object_id, owns=("palisade",), object_type="service")
    pg.stop()
    entra_postgres_fixture(authority="entra_authority", scope="module")  # a pytest fixture
    with entra_postgres(authority) as pg: ...                               # outside pytest
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import psycopg
import pytest
from psycopg import sql

from app.db.cluster import SERVER_OS_USER, SUPERUSER, LocalCluster, _output, find_pg_bindir
from tests.crypto.keyvault_server import FakeEntraID, TestPKI

__all__ = ["OSSRDBMS_RESOURCE", "OSSRDBMS_SCOPE", "EntraPostgres", "EntraPostgresError", "entra_postgres",
           "entra_postgres_fixture"]

OSSRDBMS_RESOURCE = "https://ossrdbms-aad.database.windows.net"
OSSRDBMS_SCOPE = f"{OSSRDBMS_RESOURCE}/.default"
PAM_DIR = Path("/etc/pam.d")
PAM_PREFIX = "palisade-entra-"
LEEWAY_SECONDS = 60

# The PAM module's headers (Debian package libpam0g-dev).
_HEADERS = Path("/usr/include/security/pam_modules.h")


class EntraPostgresError(RuntimeError):
    """The stand-in could not be set up (missing packages, not root, cluster failure)."""


# --- Debian packages --------------------------------------------------------------------------------


def _missing_packages() -> list[str]:
    missing = []
    if shutil.which("gcc") is None:
        missing.append("gcc")
    if not _HEADERS.is_file():
        missing.append("libpam0g-dev")
    try:
        bindir = find_pg_bindir()
        if not (bindir / "psql").exists() and shutil.which("psql") is None:
            missing.append("postgresql-client")
    except RuntimeError:
        missing.append("postgresql")
    if not Path("/usr/bin/python3").exists():
        missing.append("python3")
    return missing


def ensure_packages() -> None:
    """gcc, the PAM headers, PostgreSQL and python3, from Debian's packages when missing; raise otherwise.

    Fails (never skips) so that CI cannot pass without the test having run.
    """
    if os.geteuid() != 0:
        raise EntraPostgresError("the Entra PostgreSQL stand-in needs root: it writes a PAM service to /etc/pam.d")
    missing = _missing_packages()
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q", "--no-install-recommends", *missing]
    if subprocess.run(install, capture_output=True, timeout=900, env=env).returncode != 0:
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-q"], capture_output=True, timeout=600, env=env)
        subprocess.run(install, capture_output=True, timeout=900, env=env)
    still = _missing_packages()
    if still:
        raise EntraPostgresError(f"the Entra PostgreSQL stand-in needs the Debian packages {', '.join(still)} "
                                 "and apt-get could not install them; it fails rather than skips")


# --- the PAM module and the verifier ------------------------------------------------------------------

_PAM_MODULE_C = r"""
/* pam_exec without the 512-byte cap on the password: runs argv with the whole password on stdin. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <security/pam_appl.h>
#include <security/pam_modules.h>

static int ask_password(pam_handle_t *pamh, char **out) {
    const void *item = NULL;
    if (pam_get_item(pamh, PAM_CONV, &item) != PAM_SUCCESS || item == NULL) return PAM_CONV_ERR;
    const struct pam_conv *conv = item;
    struct pam_message msg = {PAM_PROMPT_ECHO_OFF, "Password: "};
    const struct pam_message *msgs[1] = {&msg};
    struct pam_response *resp = NULL;
    int rc = conv->conv(1, msgs, &resp, conv->appdata_ptr);
    if (rc != PAM_SUCCESS) return rc;
    if (resp == NULL) return PAM_CONV_ERR;
    *out = resp[0].resp;
    free(resp);
    return *out != NULL && **out != '\0' ? PAM_SUCCESS : PAM_AUTH_ERR;
}

PAM_EXTERN int pam_sm_authenticate(pam_handle_t *pamh, int flags, int argc, const char **argv) {
    (void)flags;
    const char *log = "/dev/null";
    if (argc > 0 && strncmp(argv[0], "log=", 4) == 0) { log = argv[0] + 4; argc--; argv++; }
    if (argc < 1) return PAM_SERVICE_ERR;
    const void *user = NULL, *rhost = NULL;
    if (pam_get_item(pamh, PAM_USER, &user) != PAM_SUCCESS || user == NULL) return PAM_USER_UNKNOWN;
    pam_get_item(pamh, PAM_RHOST, &rhost);
    char *password = NULL;
    int rc = ask_password(pamh, &password);
    if (rc != PAM_SUCCESS) { free(password); return rc; }
    size_t length = strlen(password);

    char env_user[1024], env_rhost[256];
    snprintf(env_user, sizeof env_user, "PAM_USER=%s", (const char *)user);
    snprintf(env_rhost, sizeof env_rhost, "PAM_RHOST=%s", rhost ? (const char *)rhost : "");
    char *envp[] = {env_user, env_rhost, "PATH=/usr/bin:/bin", "LC_ALL=C", NULL};
    char **args = calloc((size_t)argc + 1, sizeof(char *));
    int fds[2];
    if (args == NULL || pipe2(fds, O_CLOEXEC) != 0) { free(args); explicit_bzero(password, length); free(password); return PAM_SYSTEM_ERR; }
    for (int i = 0; i < argc; i++) args[i] = (char *)argv[i];

    pid_t pid = fork();
    if (pid == 0) {
        int out = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (dup2(fds[0], 0) < 0 || out < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0) _exit(126);
        closefrom(3);
        execve(args[0], args, envp);
        _exit(127);
    }
    close(fds[0]);
    free(args);
    int ok = 0;
    if (pid > 0) {
        size_t done = 0;
        while (done < length) {
            ssize_t n = write(fds[1], password + done, length - done);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            done += (size_t)n;
        }
        close(fds[1]);
        int status = 0;
        pid_t got;
        while ((got = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {}
        ok = got == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0 && done == length;
    } else {
        close(fds[1]);
    }
    explicit_bzero(password, length);
    free(password);
    return ok ? PAM_SUCCESS : PAM_AUTH_ERR;
}

PAM_EXTERN int pam_sm_setcred(pam_handle_t *pamh, int flags, int argc, const char **argv) {
    (void)pamh; (void)flags; (void)argc; (void)argv;
    return PAM_IGNORE;
}
"""

_VERIFIER = r'''"""Checks the password of a PAM login as a Microsoft Entra access token (stdlib only; runs as postgres).

stdin: the token; env PAM_USER: the PostgreSQL role; argv[1]: the settings file. Exit 0 = accept.
"""
import base64, hashlib, hmac, json, os, subprocess, sys, time

SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def b64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def rs256_valid(signing_input, signature, n, e):
    k = (n.bit_length() + 7) // 8
    if len(signature) != k:
        return False
    s = int.from_bytes(signature, "big")
    if s >= n:
        return False
    t = SHA256_DIGEST_INFO + hashlib.sha256(signing_input).digest()
    if k < len(t) + 11:
        return False
    expected = b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t
    return hmac.compare_digest(pow(s, e, n).to_bytes(k, "big"), expected)


def mapped_principals(config, role):
    """(object id, is_mfa) rows for role, from every database where pgaadauth is installed."""
    query = ("select p.object_id, p.is_mfa from pgaadauth.principals p join pg_catalog.pg_roles r "
             "on r.oid = p.role_oid and r.rolname = p.rolname where p.rolname = :'role';\n")
    rows = set()
    for database in config["databases"]:
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "PGCONNECT_TIMEOUT": "10", "PGAPPNAME": "pgaadauth-verifier"}
        result = subprocess.run(
            [config["psql"], "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-v", "role=" + role,
             "-h", config["socket_dir"], "-p", str(config["port"]), "-U", config["superuser"], "-d", database],
            input=query, capture_output=True, text=True, timeout=20, env=env)
        if result.returncode != 0:
            raise RuntimeError("mapping lookup in %s failed: %s" % (database, result.stderr.strip()))
        for line in result.stdout.splitlines():
            if line.strip():
                object_id, is_mfa = line.split("\t")
                rows.add((object_id.lower(), is_mfa == "t"))
    return rows


def check(config, role, token):
    parts = token.split(".")
    if len(parts) != 3:
        return "not a JWS compact token"
    try:
        header, claims, signature = json.loads(b64url(parts[0])), json.loads(b64url(parts[1])), b64url(parts[2])
    except ValueError:
        return "malformed token"
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return "malformed token"
    if header.get("alg") != "RS256":
        return "alg %r is not RS256" % header.get("alg")
    keys = [k for k in config["jwks"]["keys"] if k.get("kid") == header.get("kid") and k.get("kty") == "RSA"]
    if not keys:
        return "no key with kid %r in the tenant's JWKS" % header.get("kid")
    key = keys[0]
    n, e = int.from_bytes(b64url(key["n"]), "big"), int.from_bytes(b64url(key["e"]), "big")
    if not rs256_valid((parts[0] + "." + parts[1]).encode("ascii"), signature, n, e):
        return "bad signature"
    now = time.time()
    audience = claims.get("aud")
    if audience != config["audience"] and not (isinstance(audience, list) and config["audience"] in audience):
        return "audience %r is not %s" % (audience, config["audience"])
    if claims.get("iss") != config["issuer"]:
        return "issuer %r is not %s" % (claims.get("iss"), config["issuer"])
    if claims.get("tid") != config["tenant_id"]:
        return "tenant %r is not %s" % (claims.get("tid"), config["tenant_id"])
    exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
    if not isinstance(exp, (int, float)) or exp + config["leeway"] < now:
        return "token expired"
    if not isinstance(nbf, (int, float)) or nbf - config["leeway"] > now:
        return "token not yet valid"
    oid = str(claims.get("oid", "")).lower()
    if not oid:
        return "token has no oid"
    mapped = mapped_principals(config, role)
    if not mapped:
        return "role %r is not mapped to any Microsoft Entra object id" % role
    if len({object_id for object_id, _ in mapped}) != 1:
        return "role %r is mapped to more than one object id" % role
    object_id = next(iter(mapped))[0]
    if oid != object_id:
        return "token oid %s is not the object id of role %r" % (oid, role)
    if any(m for _, m in mapped) and "mfa" not in (claims.get("amr") or []):
        return "role %r requires MFA and the token has no mfa amr" % role
    return None


def main():
    role = os.environ.get("PAM_USER", "")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    try:
        with open(sys.argv[1], encoding="utf-8") as handle:
            config = json.load(handle)
        token = sys.stdin.buffer.read(1 << 16).decode("ascii", "replace").strip()
        reason = check(config, role, token)
    except Exception as exc:  # a refusal, loudly
        reason = "verifier error: %r" % (exc,)
    print("%s user=%s %s" % (stamp, role, "accepted" if reason is None else "refused: " + reason), flush=True)
    return 0 if reason is None else 1


if __name__ == "__main__":
    sys.exit(main())
'''

# --- SQL: the stand-in for Azure's pgaadauth functions ----------------------------------------------

_PGAADAUTH_SQL = """
create schema if not exists pgaadauth authorization {superuser};
revoke all on schema pgaadauth from public;
create table if not exists pgaadauth.principals (
    rolname name primary key,
    role_oid oid not null,
    object_id text not null,
    object_type text not null,
    is_admin boolean not null,
    is_mfa boolean not null,
    created_at timestamptz not null default now()
);
revoke all on pgaadauth.principals from public;

create or replace function pg_catalog.pgaadauth_create_principal_with_oid(
    rolename text, objectid text, objecttype text, isadmin boolean, ismfa boolean)
returns text
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $fn$
declare
    caller_is_admin boolean;
    kind text := lower(objecttype);
begin
    select r.rolsuper or exists (
               select 1 from pgaadauth.principals p
               where p.rolname = r.rolname and p.role_oid = r.oid and p.is_admin)
      into caller_is_admin
      from pg_roles r where r.rolname = session_user;
    if not coalesce(caller_is_admin, false) then
        raise exception 'only a Microsoft Entra administrator can create Microsoft Entra principals'
            using errcode = 'insufficient_privilege';
    end if;
    if rolename is null or rolename = '' then
        raise exception 'rolename must not be empty' using errcode = 'invalid_parameter_value';
    end if;
    if kind is null or kind not in ('user', 'group', 'service') then
        raise exception 'objecttype must be user, group or service, not %', objecttype
            using errcode = 'invalid_parameter_value';
    end if;
    perform objectid::uuid;  -- an Entra object id is a GUID
    execute format('create role %I login nosuperuser nobypassrls nocreatedb nocreaterole noreplication', rolename);
    if isadmin then
        execute format('alter role %I createrole createdb', rolename);
        execute format('grant azure_pg_admin to %I', rolename);
    end if;
    insert into pgaadauth.principals (rolname, role_oid, object_id, object_type, is_admin, is_mfa)
    select rolename, r.oid, lower(objectid), kind, coalesce(isadmin, false), coalesce(ismfa, false)
      from pg_roles r where r.rolname = rolename
    on conflict on constraint principals_pkey do update
       set role_oid = excluded.role_oid, object_id = excluded.object_id, object_type = excluded.object_type,
           is_admin = excluded.is_admin, is_mfa = excluded.is_mfa, created_at = now();
    return format('Created role for %s', rolename);
end
$fn$;
revoke all on function pg_catalog.pgaadauth_create_principal_with_oid(text, text, text, boolean, boolean) from public;
grant execute on function pg_catalog.pgaadauth_create_principal_with_oid(text, text, text, boolean, boolean) to public;
"""


# --- the cluster --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _TcpTlsCluster(LocalCluster):
    """LocalCluster that also listens on 127.0.0.1 with TLS 1.3 and the pg_hba/PAM setup of EntraPostgres.

    LocalCluster starts postgres with `-c listen_addresses=''` (socket only) on the command line, which
    no configuration file can override, so the start command is the one thing redone here.
    """

    def __init__(self, data_dir: Path, *, port: int, pki: TestPKI, pam_service: str) -> None:
        super().__init__(data_dir, port=port)
        self.pki = pki
        self.pam_service = pam_service

    def _initdb(self, user: Any, bindir: Path) -> None:
        super()._initdb(user, bindir)
        for source, name in ((self.pki.cert_file, "server.crt"), (self.pki.key_file, "server.key")):
            target = self.data_dir / name
            shutil.copyfile(source, target)
            os.chown(target, user.uid, user.gid)
            os.chmod(target, 0o600)
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n".join([
                "",
                "# --- Entra stand-in (tests/support/entra_postgres.py): TCP on loopback, TLS 1.3 only ---",
                "listen_addresses = '127.0.0.1'",
                "ssl = on",
                "ssl_cert_file = 'server.crt'",
                "ssl_key_file = 'server.key'",
                "ssl_min_protocol_version = 'TLSv1.3'",
                "log_connections = on",
                "",
            ]))
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("\n".join([
            "# Entra stand-in: the superuser over the private socket (directory mode 0700), nobody else;",
            "# over TCP only TLS with PAM (an Entra access token), no password/md5/scram/trust line at all.",
            "# TYPE  DATABASE  USER      ADDRESS       METHOD",
            f"local   all       {SUPERUSER}  trust",
            "local   all       all       reject",
            f"hostssl all       all       127.0.0.1/32  pam pamservice={self.pam_service}",
            "host    all       all       0.0.0.0/0     reject",
            "host    all       all       ::/0          reject",
            "",
        ]))
        os.chown(hba, user.uid, user.gid)

    def _pg_ctl_start(self, user: Any, bindir: Path) -> None:
        options = f"-k {shlex.quote(str(self.socket_dir))} -p {self.port} -c listen_addresses=127.0.0.1"
        timeout = max(1, int(self.start_timeout))
        args = [str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options,
                "-w", "-t", str(timeout), "start"]
        result = self._run(user, args, timeout=timeout + 30)
        if result.returncode == 0 and self._wait_ready():
            return
        if self.is_running():
            self._run(user, [str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"],
                      timeout=60)
        raise EntraPostgresError(f"could not start PostgreSQL in {self.data_dir}:\n{_output(result)}\n{self._log_tail()}")


def _runs_as(user: pwd.struct_passwd, args: Sequence[str]) -> bool:
    groups = os.getgrouplist(user.pw_name, user.pw_gid)
    try:
        result = subprocess.run(list(args), capture_output=True, timeout=30, cwd="/", user=user.pw_uid,
                                group=user.pw_gid, extra_groups=groups, env={"PATH": "/usr/bin:/bin"})
    except OSError:
        return False
    return result.returncode == 0


class EntraPostgres:
    """A running stand-in; build it with `EntraPostgres.start(authority)`, always `stop()` it."""

    def __init__(self, authority: FakeEntraID, base: Path, pki: TestPKI) -> None:
        self.authority = authority
        self.base = base
        self.pki = pki
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.pam_service = PAM_PREFIX + secrets.token_hex(6)
        self.pam_file = PAM_DIR / self.pam_service
        self.auth_dir = base / "auth"
        self.auth_log = base / "log" / "verifier.log"
        self.config_file = self.auth_dir / "config.json"
        self.databases: list[str] = []
        self.cluster = _TcpTlsCluster(base / "pg", port=self.port, pki=pki, pam_service=self.pam_service)
        self._stopped = False
        self.timings: dict[str, float] = {}

    # -- lifecycle ------------------------------------------------------------------------------------

    @classmethod
    def start(cls, authority: FakeEntraID, *, workdir: Path | None = None, pki: TestPKI | None = None) -> EntraPostgres:
        """Install what is missing, write the PAM service and verifier, initdb and start the cluster."""
        began = time.monotonic()
        ensure_packages()
        # A short path (Unix socket names are limited to ~100 bytes) that the postgres user can traverse:
        # pytest's tmp_path lives under a 0700 directory.
        base = Path(tempfile.mkdtemp(prefix="pal-entra-", dir=str(workdir) if workdir else "/tmp"))
        os.chmod(base, 0o711)
        pki = pki or TestPKI.create(base / "pki")
        pg = cls(authority, base, pki)
        atexit.register(pg.stop)
        try:
            pg._write_auth_files()
            pg.timings["prepare"] = time.monotonic() - began
            started = time.monotonic()
            pg.cluster.start()
            pg.timings["cluster"] = time.monotonic() - started
            pg.superuser_execute("do $$ begin if not exists (select 1 from pg_roles where rolname = 'azure_pg_admin') "
                                 "then create role azure_pg_admin nologin; end if; end $$")
            pg.install_pgaadauth("postgres")
        except BaseException:
            pg.stop()
            raise
        pg.timings["total"] = time.monotonic() - began
        return pg

    def stop(self) -> None:
        """Stop the cluster, remove the PAM service and every file; safe to call twice or half-started."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.cluster.stop()
        finally:
            self.pam_file.unlink(missing_ok=True)
            shutil.rmtree(self.base, ignore_errors=True)
            self.base.with_name(self.base.name + ".lock").unlink(missing_ok=True)

    def _write_auth_files(self) -> None:
        postgres = pwd.getpwnam(SERVER_OS_USER)
        self.auth_dir.mkdir(mode=0o755)
        log_dir = self.auth_log.parent
        log_dir.mkdir(mode=0o700)
        os.chown(log_dir, postgres.pw_uid, postgres.pw_gid)

        source = self.auth_dir / "pam_entra_token.c"
        source.write_text(_PAM_MODULE_C)
        module = self.auth_dir / "pam_entra_token.so"
        compiled = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(module), str(source),
                                   "-lpam"], capture_output=True, text=True, timeout=120)
        if compiled.returncode != 0:
            raise EntraPostgresError(f"could not compile the PAM module:\n{compiled.stderr}")
        module.chmod(0o755)
        verifier = self.auth_dir / "verify_entra_token.py"
        verifier.write_text(_VERIFIER)
        verifier.chmod(0o644)
        python = self._verifier_python(postgres, verifier)
        self._write_config()
        # pam.d arguments are split on blanks: every path here is ours and has none.
        self.pam_file.write_text(
            "# Palisade test: Microsoft Entra access tokens as PostgreSQL passwords (tests/support/entra_postgres.py)\n"
            f"auth    required  {module} log={self.auth_log} {python} -I {verifier} {self.config_file}\n"
            "account required  pam_permit.so\n"
        )
        self.pam_file.chmod(0o644)

    def _verifier_python(self, postgres: pwd.struct_passwd, verifier: Path) -> str:
        """A Python the postgres user can run (the venv's may live under /root); the verifier needs stdlib only."""
        for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3"):
            if _runs_as(postgres, [candidate, "-I", "-c", "import hashlib, hmac, json, subprocess"]):
                return candidate
        raise EntraPostgresError(f"no Python the {SERVER_OS_USER!r} user can run to verify tokens (install python3)")

    def _psql(self) -> str:
        bindir_psql = find_pg_bindir() / "psql"
        found = str(bindir_psql) if bindir_psql.exists() else shutil.which("psql")
        if not found:
            raise EntraPostgresError("psql not found")
        return found

    def _write_config(self) -> None:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.authority.public_key))
        jwk.update(kid=self.authority.kid, use="sig")  # what the authority serves at /{tenant}/discovery/v2.0/keys
        config = {
            "audience": OSSRDBMS_RESOURCE,
            "issuer": self.authority.issuer,
            "tenant_id": self.authority.tenant_id,
            "jwks": {"keys": [jwk]},
            "leeway": LEEWAY_SECONDS,
            "databases": self.databases,
            "psql": self._psql(),
            "socket_dir": str(self.cluster.socket_dir),
            "port": self.port,
            "superuser": SUPERUSER,
        }
        partial = self.config_file.with_suffix(".partial")
        partial.write_text(json.dumps(config, indent=2))
        partial.chmod(0o644)
        partial.replace(self.config_file)

    # -- connections ----------------------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        return self.pki.ca_file

    def superuser_url_for(self, database: str = "postgres") -> str:
        """libpq URL of the bootstrap superuser over the private Unix socket (trust)."""
        host = quote(str(self.cluster.socket_dir), safe="/")
        return f"postgresql://{SUPERUSER}@/{quote(database, safe='')}?host={host}&port={self.port}"

    @property
    def superuser_url(self) -> str:
        return self.superuser_url_for("postgres")

    def url(self, role: str, database: str) -> str:
        """libpq URL over TCP + TLS (verify-full against `ca_file`), no password: pass the token as password."""
        ca = quote(str(self.ca_file), safe="/")
        return (f"postgresql://{quote(role, safe='')}@{self.host}:{self.port}/{quote(database, safe='')}"
                f"?sslmode=verify-full&sslrootcert={ca}")

    def superuser_execute(self, statement: str | sql.Composable, *params: Any, database: str = "postgres") -> list[tuple]:
        with psycopg.connect(self.superuser_url_for(database), autocommit=True) as conn:
            cursor = conn.execute(statement, params or None)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    # -- the Azure functions --------------------------------------------------------------------------

    def install_pgaadauth(self, database: str) -> None:
        """Create `pgaadauth_create_principal_with_oid` (and its mapping table) in *database*."""
        self.superuser_execute(_PGAADAUTH_SQL.format(superuser=SUPERUSER), database=database)
        if database not in self.databases:
            self.databases.append(database)
            self._write_config()

    def create_principal(self, role: str, object_id: str, *, database: str = "postgres", object_type: str = "service",
                         is_admin: bool = False, is_mfa: bool = False) -> str:
        """Call the stand-in function as the superuser (as the platform does for the first admin)."""
        rows = self.superuser_execute("select pg_catalog.pgaadauth_create_principal_with_oid(%s, %s, %s, %s, %s)",
                                      role, object_id, object_type, is_admin, is_mfa, database=database)
        return rows[0][0]

    def add_entra_administrator(self, role: str, object_id: str, *, owns: Sequence[str] = (),
                                object_type: str = "service", database: str = "postgres") -> None:
        """Make *role* (mapped to *object_id*) the server's Entra administrator, owning the *owns* databases."""
        self.create_principal(role, object_id, database=database, object_type=object_type, is_admin=True)
        existing = {name for (name,) in self.superuser_execute("select datname from pg_database")}
        for name in owns:
            verb = "alter database {} owner to {}" if name in existing else "create database {} owner {}"
            self.superuser_execute(sql.SQL(verb).format(sql.Identifier(name), sql.Identifier(role)))

    def auth_log_lines(self) -> list[str]:
        """The verifier's verdicts so far (one line per TCP login attempt that reached it)."""
        try:
            return self.auth_log.read_text().splitlines()
        except FileNotFoundError:
            return []


def entra_postgres_fixture(*, authority: str = "entra_authority", scope: str = "module") -> Callable[..., Any]:
    """A pytest fixture that starts an `EntraPostgres` for the FakeEntraID fixture named *authority*.

        entra_pg = entra_postgres_fixture(authority="entra_authority")
    """

    @pytest.fixture(scope=scope)  # type: ignore[call-overload]
    def _fixture(request: pytest.FixtureRequest) -> Iterator[EntraPostgres]:
        pg = EntraPostgres.start(request.getfixturevalue(authority))
        try:
            yield pg
        finally:
            pg.stop()

    return _fixture


@contextlib.contextmanager
def entra_postgres(authority: FakeEntraID, **kwargs: Any) -> Iterator[EntraPostgres]:
    """`with entra_postgres(authority) as pg:` for code outside pytest fixtures."""
    pg = EntraPostgres.start(authority, **kwargs)
    try:
        yield pg
    finally:
        pg.stop()
