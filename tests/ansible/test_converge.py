"""site.yml and upgrade.yml against a real, freshly built Debian 12 host (converge, idempotence, verify).

The host is a debootstrap rootfs booted with systemd-nspawn in a network namespace this test makes;
its only way out is an allow-listed proxy for the Debian mirrors (see testhost.py). The tests run in
order and share the host: install, run again (nothing changes), check the result from outside
(TLS 1.3 through nginx) and inside (doctor, sandbox, RLS), check the backups (timers, two encrypted
repositories, one of them off the host in Azurite), upgrade to a newer build, try a broken build and
watch it roll back, and last restore the cluster to a point in time from the off-host repository. On a machine without systemd-nspawn the test installs it, and
fails (never skips) when it cannot.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import socket
import ssl
import subprocess
import time
import uuid

import pytest
import yaml
from conftest import ANSIBLE_DIR, TIMINGS
from site_lab import (
    FIREWALL_EXTRA_PORT,
    ISSUER,
    PROBE_COMMENT,
    SERVER_NAME,
    Lab,
    api,
    https_request,
    lab_on,
    parse_http,
    read_response,
    source_copy,
    tls_connection,
)
from testhost import HOSTNAME

pytestmark = pytest.mark.converge



@pytest.fixture(scope="module")
def lab(ansible_env, tmp_path_factory):
    with lab_on(tmp_path_factory.mktemp("converge"), ansible_env, [HOSTNAME]) as lab:
        lab.write_inventory()
        yield lab


def _ok(run) -> str:
    return f"{run.playbook} failed (log {run.log}):\n{run.tail()}"


def _https_get(lab: Lab, path: str, *, tls: str = "1.3") -> tuple[str, int, dict[str, list[str]], str]:
    """GET over TLS to the test host's nginx, verifying its certificate for SERVER_NAME."""
    cert = lab.host.ssh("sudo cat /etc/nginx/tls/server.crt").stdout
    context = ssl.create_default_context(cadata=cert)
    version = ssl.TLSVersion.TLSv1_3 if tls == "1.3" else ssl.TLSVersion.TLSv1_2
    context.minimum_version = context.maximum_version = version
    with socket.create_connection((lab.host.ip, 443), timeout=15) as raw, \
            context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls_socket:
        tls_socket.sendall(f"GET {path} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls_socket.recv(65536):
            data += chunk
        negotiated = tls_socket.version()
    status, headers, body = parse_http(data)
    return negotiated, status, headers, body


def _closed_by_server(conn: socket.socket) -> bytes:
    """Wait for the server to close the connection; returns what it sent first (a socket timeout,
    far beyond the configured limit, means it was never closed, and fails the test)."""
    received = b""
    try:
        while chunk := conn.recv(65536):
            received += chunk
    except ConnectionResetError:  # reset_timedout_connection: an RST rather than a FIN
        pass
    except TimeoutError:
        pytest.fail(f"nginx kept the connection open for {conn.gettimeout()} s (it sent {received!r})")
    return received


def _proxy_defaults() -> dict:
    return yaml.safe_load((ANSIBLE_DIR / "roles/proxy/defaults/main.yml").read_text())


def _current_release(lab: Lab) -> str:
    return lab.host.ssh("readlink /opt/palisade/current").stdout.strip()


def _tenant_slugs(lab: Lab) -> list[str]:
    out = lab.host.ssh("sudo -u postgres psql -XAtq -d palisade -c 'select slug from tenants order by slug'").stdout
    return out.split()


def _psql_as_app(lab: Lab, sql: str, *, sslmode: str = "verify-full", password: str | None = None, options: str = "") -> object:
    dsn = (f"host=127.0.0.1 dbname=palisade user=palisade_app sslmode={sslmode} "
           f"sslrootcert=/etc/palisade/database-ca.pem {options}")
    # As the service user, who may read /etc/palisade (the CA certificate); the password is the app role's.
    # It goes in on standard input: sudo logs its command line to the journal, which must hold no secret.
    script = 'IFS= read -r PGPASSWORD; export PGPASSWORD; exec psql -XAtq "$0" -c "$1"'
    command = f"sudo -u palisade sh -c {shlex.quote(script)} {shlex.quote(dsn)} {shlex.quote(sql)}"
    return lab.host.ssh(command, check=False, input=(password or lab.app_password) + "\n")


# --- install -------------------------------------------------------------------------------------


def test_site_converges_on_a_fresh_debian_12_host(lab):
    run = lab.playbook("site.yml")
    assert run.returncode == 0, _ok(run)
    assert all(stats["failed"] == 0 and stats["unreachable"] == 0 for stats in run.recap.values())
    # Packages came through the allow-listed proxy, and nothing tried to go anywhere else.
    assert lab.host.proxy.forwarded, "no package download went through the proxy"
    assert lab.host.proxy.refused == [], f"the host tried to reach hosts off the allow-list: {lab.host.proxy.refused}"


def test_second_run_changes_nothing(lab):
    run = lab.playbook("site.yml")
    assert run.returncode == 0, _ok(run)
    changed = {host: stats["changed"] for host, stats in run.recap.items()}
    assert set(changed.values()) == {0}, f"second run changed {changed}: {run.changed_tasks()}"


# --- verify --------------------------------------------------------------------------------------


def test_app_answers_over_https_with_tls_1_3_through_nginx(lab):
    negotiated, status, headers, body = _https_get(lab, "/health/ready")
    assert negotiated == "TLSv1.3"
    assert status == 200 and '"status":"ok"' in body.replace(" ", "")
    assert len(headers.get("strict-transport-security", [])) == 1
    assert headers["strict-transport-security"][0].startswith("max-age=63072000")
    assert "server" not in headers or "nginx/" not in headers["server"][0]  # server_tokens off


def test_tls_1_2_is_refused_by_default(lab):
    with pytest.raises(ssl.SSLError):
        _https_get(lab, "/health/live", tls="1.2")


def _plain_http(lab: Lab, host: str, path: str = "/health/live?x=1") -> bytes:
    with socket.create_connection((lab.host.ip, 80), timeout=15) as plain:
        plain.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return _closed_by_server(plain)


def test_plain_http_redirects_to_https(lab):
    status, headers, _ = parse_http(_plain_http(lab, SERVER_NAME))
    assert status == 301
    assert headers["location"] == [f"https://{SERVER_NAME}/health/live?x=1"]


# Issue 16: any Host was served (nginx's default server was the app's), and plain HTTP redirected
# whatever name a client sent. Now only the configured names get an answer.
OTHER_HOSTS = ["attacker.example", f"{SERVER_NAME}.attacker.example", "10.0.0.1"]


@pytest.mark.parametrize("host", OTHER_HOSTS)
def test_plain_http_for_another_host_is_closed_without_an_answer(lab, host):
    assert _plain_http(lab, host) == b""


@pytest.mark.parametrize("sni", ["attacker.example", None])
def test_tls_for_another_host_name_is_refused_in_the_handshake(lab, sni):
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # whatever certificate: there must be none
    with socket.create_connection((lab.host.ip, 443), timeout=15) as raw, pytest.raises(ssl.SSLError):
        context.wrap_socket(raw, server_hostname=sni)


@pytest.mark.parametrize("host", OTHER_HOSTS)
def test_tls_to_the_right_name_with_another_host_header_gets_no_answer(lab, host):
    with tls_connection(lab.host) as conn:
        conn.sendall(f"GET /api/v1/tenants/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        # The handshake named this host; the request names another: nginx's default server takes
        # it and closes the connection without a byte.
        assert _closed_by_server(conn) == b""


def test_the_right_host_gets_no_redirect_built_from_it(lab):
    # The app's other slash form is a 404 problem, not a redirect (FastAPI's redirect_slashes).
    status, headers, body = https_request(
        lab.host, f"GET /api/v1/tenants/ HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n".encode())
    assert status == 404 and "location" not in headers, (status, headers)
    assert headers["content-type"] == ["application/problem+json"]


_ON_HOST = """
import http.client, ssl, sys
host, port, path, header = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if port == 443:
    conn = http.client.HTTPSConnection(host, port, timeout=15, context=ssl._create_unverified_context())
else:
    conn = http.client.HTTPConnection(host, port, timeout=15)
try:
    conn.request("GET", path, headers={"Host": header})
    r = conn.getresponse()
    print(r.status, r.getheader("Location") or "-")
except (ConnectionError, http.client.RemoteDisconnected) as exc:
    print("closed", type(exc).__name__)
"""


def _on_host(lab: Lab, port: int, path: str, host: str) -> str:
    args = " ".join(shlex.quote(a) for a in ("127.0.0.1", str(port), path, host))
    return lab.host.ssh(f"python3 -c {shlex.quote(_ON_HOST)} {args}").stdout.strip()


def test_the_app_is_configured_with_the_proxy_names_and_refuses_others(lab):
    settings = lab.host.ssh("sudo cat /etc/palisade/palisade.env").stdout
    assert f"PALISADE_ALLOWED_HOSTS='{SERVER_NAME}'" in settings
    # Straight to the app on its loopback port, past nginx: another Host is a 421 before routing.
    assert _on_host(lab, 8000, "/api/v1/tenants", "attacker.example") == "421 -"
    assert _on_host(lab, 8000, "/api/v1/tenants", SERVER_NAME) == "401 -"
    assert _on_host(lab, 8000, "/health/ready", "127.0.0.1") == "200 -"


def test_the_hosts_own_health_check_reaches_only_the_probes(lab):
    # upgrade.yml's check (https://127.0.0.1/health/ready) works; nothing else answers on loopback.
    assert _on_host(lab, 443, "/health/ready", "127.0.0.1") == "200 -"
    assert _on_host(lab, 443, "/api/v1/tenants", "127.0.0.1").startswith("closed")
    assert _on_host(lab, 443, "/api/v1/tenants", SERVER_NAME).startswith("closed")


def test_proxy_overwrites_forwarding_headers_for_the_trusted_proxy_rule(lab):
    config = lab.host.ssh("sudo nginx -T 2>/dev/null").stdout
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in config
    assert "proxy_set_header X-Forwarded-Proto https;" in config
    assert "proxy_add_x_forwarded_for" not in config
    settings = lab.host.ssh("sudo cat /etc/palisade/palisade.env").stdout
    assert "PALISADE_TRUSTED_PROXIES='127.0.0.1/32'" in settings


def _assert_problem(status: int, headers: dict[str, list[str]], body: str, expected: int) -> dict:
    assert status == expected, (status, headers, body)
    assert headers["content-type"] == ["application/problem+json"]
    problem = json.loads(body)
    assert problem["status"] == expected and problem["type"] == "about:blank"
    assert problem["title"] and problem["detail"]
    assert "nginx" not in body.lower()
    assert headers.get("server", ["nginx"]) == ["nginx"]  # server_tokens off: no version
    return problem


# The per-answer headers of the app's own answer; every other header it sends must be on nginx's
# refusals too, with the same value (the security headers, HSTS, Cache-Control...).
_PER_ANSWER = {"date", "server", "content-type", "content-length", "connection", "keep-alive", "vary",
               "x-correlation-id", "transfer-encoding"}


def test_nginx_refusals_are_problem_documents_with_the_apps_security_headers(lab):
    """Oversized header line (431), header block over the total bound (431), too many header fields
    (431), a request line too long (414), a malformed request (400) and a body over the cap (413):
    each refused by nginx itself (the single header, the many small ones and the URI are well under
    the app's own 16 KiB, so the app would have taken them) with an RFC 9457 document and the same
    security headers as the app's answers."""
    defaults = _proxy_defaults()
    line_max = defaults["proxy_large_client_header_buffers_size"]
    total_max = defaults["proxy_client_header_buffer_size"] + defaults["proxy_large_client_header_buffers_number"] * line_max
    host = f"Host: {SERVER_NAME}\r\nConnection: close\r\n"

    _, app_status, app_headers, _ = _https_get(lab, "/health/ready")
    assert app_status == 200
    shared = {name: values for name, values in app_headers.items()
              if name not in _PER_ANSWER and not name.startswith("ratelimit")}
    assert {"content-security-policy", "strict-transport-security", "x-content-type-options", "permissions-policy",
            "cache-control"} <= shared.keys()

    big_header = f"GET /health/live HTTP/1.1\r\n{host}X-Filler: {'a' * (line_max + 1000)}\r\n\r\n"
    many_headers = f"GET /health/live HTTP/1.1\r\n{host}" + "".join(
        f"X-Filler-{i}: {'b' * 500}\r\n" for i in range(total_max // 500 + 4)) + "\r\n"
    too_many_headers = f"GET /health/live HTTP/1.1\r\n{host}" + "".join(
        f"X-N-{i}: v\r\n" for i in range(defaults["proxy_max_headers"] + 1)) + "\r\n"
    long_uri = f"GET /health/live?{'c' * (line_max + 1000)} HTTP/1.1\r\n{host}\r\n"
    malformed = f"GET /health/live HTTP/1.1\r\n{host}No colon here\r\n\r\n"
    too_big_body = f"POST /api/v1/invitations/accept HTTP/1.1\r\n{host}Content-Length: 100000000\r\n\r\n"
    assert max(len(big_header), len(too_many_headers), len(long_uri)) < 16 * 1024  # the app would accept these
    for raw, expected in ((big_header, 431), (many_headers, 431), (too_many_headers, 431), (long_uri, 414),
                          (malformed, 400), (too_big_body, 413)):
        status, headers, body = https_request(lab.host, raw.encode())
        _assert_problem(status, headers, body, expected)
        for name, values in shared.items():
            assert headers.get(name) == values, f"{expected}: {name} is {headers.get(name)}, the app sends {values}"


def test_nginx_drops_a_silent_or_slow_client_without_an_answer(lab):
    """A connection that never starts TLS, one that sends half its headers then stalls, a plain HTTP
    one that sends nothing (client_header_timeout), and one whose body stalls (client_body_timeout;
    both 2 s in this inventory) are closed by nginx with nothing sent back."""
    with socket.create_connection((lab.host.ip, 443), timeout=20) as silent:
        assert _closed_by_server(silent) == b""
    with tls_connection(lab.host, timeout=20) as slow:
        slow.sendall(f"GET /health/live HTTP/1.1\r\nHost: {SERVER_NAME}\r\n".encode())
        assert _closed_by_server(slow) == b""
    with socket.create_connection((lab.host.ip, 80), timeout=20) as silent_http:
        assert _closed_by_server(silent_http) == b""
    with tls_connection(lab.host, timeout=20) as stalled_body:
        stalled_body.sendall(f"POST /api/v1/invitations/accept HTTP/1.1\r\nHost: {SERVER_NAME}\r\n"
                             "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode())
        assert _closed_by_server(stalled_body) == b""


def test_nginx_closes_an_idle_keep_alive_connection(lab):
    """The connection serves two requests in a row (keep-alive works), then, left idle, nginx closes
    it (keepalive_timeout, 2 s in this inventory)."""
    with tls_connection(lab.host, timeout=20) as conn:
        for _ in range(2):
            conn.sendall(f"GET /health/live HTTP/1.1\r\nHost: {SERVER_NAME}\r\n\r\n".encode())
            status, headers, _ = read_response(conn)
            assert status == 200 and headers.get("connection") != ["close"]
        assert _closed_by_server(conn) == b""


def test_proxy_role_refuses_header_buffers_the_app_would_not_accept(lab):
    """Header buffers that would let through more than the app's own PALISADE_MAX_HEADER_BYTES are
    refused before anything changes (the app, not nginx, would then refuse, in plain text)."""
    playbook = lab.workdir / "proxy-only.yml"
    playbook.write_text(yaml.safe_dump([{"name": "The proxy role alone", "hosts": "palisade", "become": True,
                                         "roles": [{"role": str(ANSIBLE_DIR / "roles/proxy")}]}]))
    run = lab.playbook(str(playbook), "-e", json.dumps({"proxy_large_client_header_buffers_size": 16384}))
    assert run.returncode != 0
    assert "Check the connection bounds" in run.output and "under the app's" in run.output
    assert all(stats["changed"] == 0 for stats in run.recap.values())


def test_doctor_passes_on_the_host(lab):
    result = lab.host.ssh("sudo palisadectl doctor", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"doctor: all \d+ checks passed", result.stdout)


def test_service_is_sandboxed_listens_on_loopback_and_keeps_secrets_out_of_unit_and_env(lab):
    shown = lab.host.ssh(
        "systemctl show palisade.service -p User -p NoNewPrivileges -p ProtectSystem -p ProtectHome -p PrivateTmp "
        "-p PrivateDevices -p CapabilityBoundingSet -p RestrictAddressFamilies -p MainPID -p ActiveState"
    ).stdout
    props = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    assert props["ActiveState"] == "active"
    assert props["User"] == "palisade"
    assert props["NoNewPrivileges"] == "yes"
    assert props["ProtectSystem"] == "strict"
    assert props["ProtectHome"] == "yes"
    assert props["PrivateTmp"] == "yes"
    assert props["PrivateDevices"] == "yes"
    assert props["CapabilityBoundingSet"] == ""
    assert set(props["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    security = lab.host.ssh("systemd-analyze security --no-pager palisade.service", check=False).stdout
    exposure = float(re.search(r"Overall exposure level for palisade.service: ([0-9.]+)", security)[1])
    TIMINGS.append(f"systemd-analyze security palisade.service: exposure {exposure} (0 safest, 10 unsafe)")
    assert exposure < 3.0, security
    listening = lab.host.ssh("ss -Htln 'sport = :8000'").stdout.split()
    assert "127.0.0.1:8000" in listening and "0.0.0.0:8000" not in listening and "*:8000" not in listening
    pid = props["MainPID"]
    exposed = {
        "unit": lab.host.ssh("systemctl cat palisade.service").stdout,
        "settings": lab.host.ssh("sudo cat /etc/palisade/palisade.env").stdout,
        "process environment": lab.host.ssh(f"sudo cat /proc/{pid}/environ | tr '\\0' '\\n'").stdout,
    }
    for where, text in exposed.items():
        assert lab.app_password not in text and lab.admin_password not in text, f"a database password is in the {where}"
    assert "LoadCredential=database-url:/etc/palisade/credentials/database-url" in exposed["unit"]
    assert "admin-database-url" not in exposed["unit"]  # only migrations get the admin URL
    modes = lab.host.ssh("sudo sh -c \"stat -c '%a %U %n' /etc/palisade/credentials /etc/palisade/credentials/*\"").stdout
    for line in modes.splitlines():
        mode, owner, _ = line.split(maxsplit=2)
        assert owner == "root" and mode in {"600", "700"}, line


def test_app_role_cannot_bypass_row_level_security(lab):
    created = lab.host.ssh(f"sudo palisadectl tenant create --name Acme --slug acme --admin-issuer {ISSUER} "
                           "--admin-subject alice", check=False)
    assert created.returncode == 0, created.stdout + created.stderr
    everyone = lab.host.ssh("sudo -u postgres psql -XAtq -d palisade -c 'select count(*) from users'").stdout
    assert int(everyone) >= 1

    role = _psql_as_app(lab, "select rolsuper, rolbypassrls from pg_roles where rolname = current_user")
    assert role.returncode == 0, role.stderr
    assert role.stdout.strip() == "f|f"
    no_context = _psql_as_app(lab, "select count(*) from users")
    assert no_context.returncode == 0, no_context.stderr
    assert no_context.stdout.strip() == "0"  # no tenant context: no rows, not all rows
    forced = _psql_as_app(lab, "set row_security = off; select count(*) from users")
    assert forced.returncode != 0 and "row-level security" in forced.stderr
    plaintext = _psql_as_app(lab, "select 1", sslmode="disable")
    assert plaintext.returncode != 0 and "no encryption" in plaintext.stderr  # pg_hba: TLS only


def test_postgresql_speaks_only_tls_1_3(lab):
    """`ssl_min_protocol_version = TLSv1.3` (it was 1.2): a client capped at TLS 1.2 is refused in the
    handshake, and every connection the running app holds negotiated TLS 1.3."""
    tls12 = _psql_as_app(lab, "select 1", options="ssl_max_protocol_version=TLSv1.2")
    assert tls12.returncode != 0 and "SSL" in tls12.stderr, tls12.stdout + tls12.stderr
    versions = lab.host.ssh("sudo -u postgres psql -XAtq -d palisade -c \"select distinct s.version from pg_stat_ssl s "
                            "join pg_stat_activity a using (pid) where a.usename = 'palisade_app'\"").stdout.split()
    assert versions == ["TLSv1.3"]


def _connects(lab: Lab, port: int, *, source: str | None = None) -> str:
    """'open', 'refused' (a TCP reset: nothing filters it) or 'dropped' (no answer: the firewall)."""
    try:
        with socket.create_connection((lab.host.ip, port), timeout=3, source_address=(source, 0) if source else None):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "dropped"


def test_the_firewall_admits_https_and_admin_ssh_and_drops_the_rest(lab):
    """nftables on the host: 80/443 for everyone, SSH only from firewall_admin_networks (the test
    runner's address), the one extra service only from the network listed for it, anything else
    dropped unanswered, also a port a process listens on."""
    assert "policy drop" in lab.host.ssh("sudo nft list chain inet palisade input").stdout
    port = FIREWALL_EXTRA_PORT
    lab.host.ssh(f"sudo systemd-run --unit=palisade-test-listener python3 -m http.server --bind 0.0.0.0 {port}")
    subprocess.run(["ip", "addr", "add", f"{lab.outsider}/{lab.host.network.prefix}", "dev", lab.host.network.veth_host], check=True)
    try:
        # It serves, on the host itself.
        lab.host.ssh(f"for i in $(seq 50); do python3 -c 'import urllib.request; urllib.request.urlopen(\"http://127.0.0.1:{port}/\")' "
                     "2>/dev/null && exit 0; sleep 0.2; done; exit 1")
        assert _connects(lab, 443) == _connects(lab, 80) == _connects(lab, 22) == "open"
        assert _connects(lab, 443, source=lab.outsider) == "open"
        assert _connects(lab, 22, source=lab.outsider) == "dropped"
        assert _connects(lab, port, source=lab.outsider) == "open"
        assert _connects(lab, port) == "dropped"
        assert _connects(lab, 5432) == "dropped"  # PostgreSQL admits only its app networks (here: loopback)
    finally:
        subprocess.run(["ip", "addr", "del", f"{lab.outsider}/{lab.host.network.prefix}", "dev", lab.host.network.veth_host], check=False)
        lab.host.ssh("sudo systemctl stop palisade-test-listener", check=False)


# --- secrets: no password in any log, the key-encryption key ------------------------------------


def _secrets_in_logs(lab: Lab) -> list[str]:
    """Where any secret the inventory ever held shows up: files under /var/log on the host (the
    PostgreSQL log, nginx, apt...), the journal (every field), and Ansible's own output. The secrets
    are named by their place in lab.secrets_set, never printed; the patterns go to grep on standard
    input, so no command line (which sudo logs) carries them."""
    found = []
    patterns = "".join(secret + "\n" for secret in lab.secrets_set)
    files = lab.host.ssh("sudo grep -rlaF -f - /var/log", check=False, input=patterns)
    assert files.returncode in (0, 1), files.stderr
    found += [f"file {name}" for name in files.stdout.split()]
    journal = lab.host.ssh("sudo journalctl --no-pager -o verbose", timeout=300).stdout
    outputs = {"the journal": journal, **{f"Ansible's output ({run.log.name})": run.output for run in lab.runs}}
    for where, text in outputs.items():
        found += [f"secret #{i} in {where}" for i, secret in enumerate(lab.secrets_set) if secret in text]
    return found


def _postgresql_log(lab: Lab) -> str:
    return lab.host.ssh("sudo sh -c 'cat /var/log/postgresql/*.log'").stdout


def test_no_database_password_in_any_log_after_install(lab):
    """The server logs DDL (log_statement=ddl), so the statements that created the two roles are in
    its log: with a SCRAM verifier computed on the control node, never with the password."""
    log = _postgresql_log(lab)
    for role in ("palisade_admin", "palisade_app"):
        created = [line for line in log.splitlines() if f'CREATE USER "{role}"' in line]
        assert created, f"the statement creating {role} is not in the PostgreSQL log (log_statement=ddl)"
    assert _secrets_in_logs(lab) == []
    for role in ("palisade_admin", "palisade_app"):
        assert all("PASSWORD 'SCRAM-SHA-256$4096:" in line for line in log.splitlines() if f'CREATE USER "{role}"' in line)
    # The backups' cipher passphrase and storage key are on the host (pgbackrest.conf, root:postgres
    # 0640), and the logs searched above include pgBackRest's own, written by the first full backup.
    config = lab.host.ssh("sudo stat -c '%a %U %G' /etc/pgbackrest/pgbackrest.conf").stdout.split()
    assert config == ["640", "root", "postgres"]
    assert lab.backup_passphrase in lab.host.ssh("sudo cat /etc/pgbackrest/pgbackrest.conf").stdout
    assert "palisade-backup.log" in lab.host.ssh("sudo ls /var/log/pgbackrest").stdout.split()


def _kek_files(lab: Lab) -> dict[str, str]:
    """name -> "mode owner sha256" of each file in the KEK directory, and "." for the directory itself."""
    script = ("stat -c '%n %a %U' /etc/palisade/kek && cd /etc/palisade/kek && for f in *; do "
              'echo "$f $(stat -c \'%a %U\' "$f") $(sha256sum < "$f" | cut -c1-64)"; done\n')
    listing = lab.host.ssh("sudo sh -s", input=script, check=False)
    assert listing.returncode == 0, f"no KEK directory /etc/palisade/kek: {listing.stderr}"
    lines = listing.stdout.splitlines()
    entries = {".": lines[0].split(maxsplit=1)[1]}
    entries.update(line.split(maxsplit=1) for line in lines[1:])
    return entries


def test_a_provider_credential_can_be_stored_with_the_provisioned_kek(lab):
    """An admin stores an API key for a workspace through the API and reads it back (201, 200; not
    the 503 of a server without a key-encryption key). The KEK directory is the service user's alone."""
    # The tenant the RLS test above created (alice is its customer_admin): the upgrade tests below
    # count the tenants, so this test adds a workspace, not a tenant.
    tenant_id = lab.host.ssh("sudo -u postgres psql -XAtq -d palisade -c \"select id from tenants where slug = 'acme'\"").stdout.strip()
    assert tenant_id, "no tenant acme: the RLS test above did not create it"
    token = lab.idp.token("alice")
    status, workspace = api(lab.host, "POST", f"/tenants/{tenant_id}/workspaces", token, {"name": "Keys", "slug": "keys"})
    assert status == 201, workspace
    secret = "sk-converge-" + uuid.uuid4().hex
    lab.secrets_set.append(secret)
    base = f"/tenants/{tenant_id}/workspaces/{workspace['id']}/credentials"
    status, credential = api(lab.host, "POST", base, token, {"provider": "openai", "label": "converge", "secret": secret})
    assert status == 201, credential
    assert credential["last4"] == secret[-4:] and "secret" not in credential
    status, read = api(lab.host, "GET", f"{base}/{credential['id']}", token)
    assert status == 200, read
    assert (read["id"], read["fingerprint"], read["last4"]) == (credential["id"], credential["fingerprint"], secret[-4:])

    settings = lab.host.ssh("sudo cat /etc/palisade/palisade.env").stdout
    assert "PALISADE_KEK_PROVIDER='local'" in settings and "PALISADE_KEK_DIR='/etc/palisade/kek'" in settings
    files = _kek_files(lab)
    assert files.pop(".") == "700 palisade"
    assert list(files) == ["kek-1.key"], files
    assert files["kek-1.key"].startswith("600 palisade ")
    lab.kek = {"files": files, "credential": f"{base}/{credential['id']}", "secret": secret,
               "fingerprint": credential["fingerprint"], "subject": "alice"}


def test_rotated_database_passwords_reach_no_log_and_the_app_reconnects(lab):
    """Rotation as the README says: new passwords in the vault, site.yml again. The roles get the
    new passwords (as verifiers), the app restarts on them, the old app password is refused, and
    neither the old nor the new passwords are in any log."""
    old_app_password = lab.app_password
    pid_before = lab.host.ssh("systemctl show -p MainPID --value palisade.service").stdout.strip()
    lab.rotate_database_passwords()
    run = lab.playbook("site.yml")
    assert run.returncode == 0, _ok(run)
    changed = run.changed_tasks()
    assert "postgresql : Create the admin (migration) role" in changed and "postgresql : Create the app role (no superuser, no BYPASSRLS, owns nothing)" in changed, changed
    assert lab.host.ssh("systemctl show -p MainPID --value palisade.service").stdout.strip() != pid_before
    _, status, _, _ = _https_get(lab, "/health/ready")
    assert status == 200
    assert lab.host.ssh("sudo palisadectl doctor", check=False).returncode == 0
    new = _psql_as_app(lab, "select current_user")
    assert new.returncode == 0 and new.stdout.strip() == "palisade_app", new.stderr
    old = _psql_as_app(lab, "select 1", password=old_app_password)
    assert old.returncode != 0 and "password authentication failed" in old.stderr
    altered = [line for line in _postgresql_log(lab).splitlines() if 'ALTER USER "palisade_' in line and "PASSWORD" in line]
    assert len(altered) >= 2 and all("PASSWORD 'SCRAM-SHA-256$4096:" in line for line in altered), altered
    assert _secrets_in_logs(lab) == []


def test_the_kek_is_kept_across_reruns_and_restarts(lab):
    """The rerun above did not touch the KEK (a new one would make every stored credential
    unreadable) and the restarted app unwraps the workspace's data key with it: the same secret,
    stored again, gets the same fingerprint (keyed by that data key)."""
    kek = getattr(lab, "kek", None)
    assert kek, "the credential test above did not get as far as storing a credential"
    files = _kek_files(lab)
    files.pop(".")
    assert files == kek["files"]
    token = lab.idp.token(kek["subject"])
    status, replaced = api(lab.host, "PUT", kek["credential"], token, {"secret": kek["secret"]})
    assert status == 200, replaced
    assert replaced["fingerprint"] == kek["fingerprint"]


def test_the_kek_rotates_with_a_playbook_tag_and_credentials_still_read(lab):
    """`site.yml --tags kek-rotate`: a second version beside the first (kept: older wrapped keys and
    backups need it), every tenant's data keys re-wrapped under it, the credential stored before
    still served with the same fingerprint, and the rest of the install untouched."""
    kek = getattr(lab, "kek", None)
    assert kek, "the credential test above did not get as far as storing a credential"
    run = lab.playbook("site.yml", "--tags", "kek-rotate")
    assert run.returncode == 0, _ok(run)
    assert [task for task in run.changed_tasks() if "key" not in task.lower()] == []
    files = _kek_files(lab)
    assert files["kek-1.key"] == kek["files"]["kek-1.key"]
    assert files["kek-2.key"].split()[:2] == ["600", "palisade"] and files["kek-2.key"] != files["kek-1.key"]
    wrapped_under = lab.host.ssh("sudo -u postgres psql -XAtq -d palisade -c "
                                 "\"select distinct kek_version from tenant_data_keys where state <> 'destroyed'\"").stdout.split()
    assert wrapped_under == ["2"]
    token = lab.idp.token(kek["subject"])
    status, read = api(lab.host, "GET", kek["credential"], token)
    assert status == 200 and read["fingerprint"] == kek["fingerprint"], read
    lab.kek["files"] = {name: entry for name, entry in files.items() if name != "."}


# --- backups: pgBackRest -------------------------------------------------------------------------


def _pgbackrest(lab: Lab, *args: str, check: bool = True):
    return lab.host.ssh("sudo -u postgres pgbackrest --stanza=palisade " + " ".join(map(shlex.quote, args)), check=check,
                        timeout=600)


def _backup_info(lab: Lab, repo: int | None = None) -> dict:
    return json.loads(_pgbackrest(lab, *([f"--repo={repo}"] if repo else []), "--output=json", "info").stdout)[0]


def _backup_sets(lab: Lab, repo: int) -> list[dict]:
    return _backup_info(lab, repo)["backup"]


def _annotation(lab: Lab, label: str) -> str | None:
    """The palisade-version annotation of one backup set in repo1, as `pgbackrest info --set` shows it."""
    shown = _pgbackrest(lab, "--repo=1", f"--set={label}", "info").stdout
    found = re.search(r"palisade-version: (\S+)", shown)
    return found[1] if found else None


def test_backups_are_scheduled_on_timers_into_two_encrypted_repositories(lab):
    """Both timers are active; the first full backup is in the local repository and in the off-host
    one (Azure Blob Storage, here Azurite), and what lands there is ciphertext: the repository's own
    index file is an OpenSSL-encrypted file (pgBackRest writes its Salted__ header), not JSON/INI."""
    timers = lab.host.ssh("systemctl is-active pgbackrest-full.timer pgbackrest-diff.timer", check=False).stdout.split()
    assert timers == ["active", "active"]
    assert lab.host.ssh("systemctl is-enabled pgbackrest-full.timer pgbackrest-diff.timer").stdout.split() == ["enabled"] * 2
    info = _backup_info(lab)
    assert info["status"]["code"] == 0, info["status"]
    assert [(repo["key"], repo["cipher"], repo["status"]["code"]) for repo in info["repo"]] == [
        (1, "aes-256-cbc", 0), (2, "aes-256-cbc", 0)]
    assert {backup["database"]["repo-key"] for backup in info["backup"] if backup["type"] == "full"} == {1, 2}
    local = lab.host.ssh("sudo head -c 8 /var/lib/pgbackrest/backup/palisade/backup.info").stdout
    assert local == "Salted__"
    off_host = lab.azurite.blob("list", "pgbackrest", "palisade/").split()
    assert "palisade/backup/palisade/backup.info" in off_host
    assert any(name.startswith("palisade/archive/palisade/15-1/") for name in off_host), off_host
    blob = base64.b64decode(lab.azurite.blob("read", "pgbackrest", "palisade/backup/palisade/backup.info"))
    assert blob.startswith(b"Salted__"), blob[:40]


# --- upgrade -------------------------------------------------------------------------------------


def _database_revision(lab: Lab) -> str:
    return lab.host.ssh("sudo -u postgres psql -XAtq -d palisade -c 'select version_num from alembic_version'").stdout.strip()


def test_upgrade_check_reports_the_migrations_and_changes_nothing(lab):
    """`upgrade.yml --check` used to crash; now it lists what the new release would apply, through
    the new release itself, and leaves the host, the service and the database as they were."""
    new = f"{lab.versions[0]}.post1"
    lab.newer_source = source_copy(lab.workdir / f"src-{new}", version=new, probe_migration=True)
    running, revision = _current_release(lab), _database_revision(lab)
    releases = lab.host.ssh("ls -a /opt/palisade /opt/palisade/releases").stdout
    run = lab.playbook("upgrade.yml", "--check", "-e", f"palisade_source_dir={lab.newer_source}")
    assert run.returncode == 0, _ok(run)
    assert "1 migration(s) to apply: 9900_ansible_upgrade_probe" in run.output
    assert "Check mode, nothing changed: a real run would back up the database" in run.output
    assert "applying 9900_ansible_upgrade_probe" in run.output
    assert (_current_release(lab), _database_revision(lab)) == (running, revision)
    assert lab.host.ssh("ls -a /opt/palisade /opt/palisade/releases").stdout == releases  # the check's copy is gone
    assert lab.host.ssh("systemctl is-active palisade.service").stdout.strip() == "active"


def test_upgrade_refuses_a_migration_that_needs_every_host_stopped(lab):
    """A contract step (the migration declares `needs_stop`) would break the hosts still serving
    the running release during a host-by-host upgrade: refused before any host or the database changes."""
    contract = f"{lab.versions[0]}.post3"
    source = source_copy(lab.workdir / f"src-{contract}", version=contract, probe_migration=True,
                         needs_stop="the running release still writes the column this drops")
    running, revision = _current_release(lab), _database_revision(lab)
    run = lab.playbook("upgrade.yml", "-e", f"palisade_source_dir={source}")
    assert run.returncode != 0, "the contract step was not refused"
    assert "Nothing was changed on the database. 9900_ansible_upgrade_probe needs every app host stopped first" in run.output
    assert "the running release still writes the column this drops" in run.output
    assert (_current_release(lab), _database_revision(lab)) == (running, revision)


def test_upgrade_to_a_newer_build_keeps_all_data(lab):
    old, new = lab.versions[0], f"{lab.versions[0]}.post1"
    before = _tenant_slugs(lab)
    run = lab.playbook("upgrade.yml", "-e", f"palisade_source_dir={lab.newer_source}")
    assert run.returncode == 0, _ok(run)
    lab.versions.append(new)
    assert "1 migration(s) to apply: 9900_ansible_upgrade_probe" in run.output
    assert _current_release(lab) == f"releases/{new}"
    assert _tenant_slugs(lab) == before == ["acme"]
    comment = lab.host.ssh("sudo -u postgres psql -XAtq -d palisade -c \"select obj_description('tenants'::regclass)\"")
    assert comment.stdout.strip() == PROBE_COMMENT
    newest = _backup_sets(lab, repo=1)[-1]
    assert newest["type"] == "incr" and _annotation(lab, newest["label"]) == old, newest
    assert lab.host.ssh("sudo palisadectl doctor", check=False).returncode == 0
    verified = lab.host.ssh("sudo palisadectl audit verify", check=False)
    assert verified.returncode == 0 and "ok " in verified.stdout, verified.stdout + verified.stderr
    _, status, _, _ = _https_get(lab, "/health/ready")
    assert status == 200


def test_broken_build_rolls_back_to_the_running_release(lab):
    running, broken = lab.versions[-1], f"{lab.versions[0]}.post2"
    source = source_copy(lab.workdir / f"src-{broken}", version=broken, base=lab.newer_source, broken=True)
    run = lab.playbook("upgrade.yml", "-e", f"palisade_source_dir={source}", "-e", "palisade_health_timeout_seconds=30")
    assert run.returncode != 0, "the broken build was not refused"
    assert "UPGRADE FAILED on " in run.output
    assert f"is back on {running}" in run.output and "answers its health check" in run.output
    # The restore steps name the pgBackRest backup taken before this attempt, while `running` ran.
    label = re.search(r"pgbackrest --stanza=palisade --repo=1 --set=(\S+) --type=immediate --target-action=promote "
                      r"--delta restore", run.output)
    assert label, run.tail()
    assert label[1] == _backup_sets(lab, repo=1)[-1]["label"] and _annotation(lab, label[1]) == running
    assert _current_release(lab) == f"releases/{running}"
    assert lab.host.ssh("systemctl is-active palisade.service").stdout.strip() == "active"
    negotiated, status, _, _ = _https_get(lab, "/health/ready")
    assert (negotiated, status) == ("TLSv1.3", 200)
    assert _tenant_slugs(lab) == ["acme"]


# --- restore: the README's runbook, to a point in time, from the off-host repository --------------


def test_point_in_time_restore_from_the_off_host_repository(lab):
    """A backup through the scheduled unit, a tenant, the target time, another tenant; then the
    README's restore runbook into a fresh data directory from repo2 (Azurite) to that time. The
    first tenant is back, the second is not, and doctor and audit verify pass on the restored
    database. Destructive (the cluster is replaced): the last test of the module."""
    started = time.monotonic()
    backup = lab.host.ssh("sudo systemctl start pgbackrest-backup@diff.service", check=False, timeout=600)
    assert backup.returncode == 0, backup.stderr
    assert [b["type"] for b in _backup_sets(lab, repo=2)][-1] == "diff"
    TIMINGS.append(f"differential backup into both repositories: {time.monotonic() - started:.0f}s")

    def create_tenant(slug: str) -> None:
        created = lab.host.ssh(f"sudo palisadectl tenant create --name {slug} --slug {slug} --admin-issuer {ISSUER} "
                               f"--admin-subject {slug}-admin", check=False)
        assert created.returncode == 0, created.stdout + created.stderr

    create_tenant("before-target")
    target = lab.host.ssh("sudo -u postgres psql -XAtq -c \"select clock_timestamp() at time zone 'UTC'\"").stdout.strip()
    create_tenant("after-target")
    # Waits until the current WAL segment (holding the second tenant) is in every repository.
    _pgbackrest(lab, "check")
    assert _tenant_slugs(lab) == ["acme", "after-target", "before-target"]

    started = time.monotonic()
    runbook = f"""set -eux
systemctl stop palisade
systemctl stop postgresql@15-main
mv /var/lib/postgresql/15/main /var/lib/postgresql/15/main.before-restore
install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/15/main
sudo -u postgres pgbackrest --stanza=palisade --repo=2 --type=time --target='{target}+00' --target-action=promote restore
systemctl start postgresql@15-main
until [ "$(sudo -u postgres psql -XAtq -c 'select pg_is_in_recovery()')" = f ]; do sleep 1; done
systemctl start palisade
"""
    restored = lab.host.ssh("sudo sh -s", input=runbook, check=False, timeout=900)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    TIMINGS.append(f"point-in-time restore from repo2 (Azurite): {time.monotonic() - started:.0f}s")

    assert _tenant_slugs(lab) == ["acme", "before-target"]
    doctor = lab.host.ssh("sudo palisadectl doctor", check=False)
    assert doctor.returncode == 0 and re.search(r"doctor: all \d+ checks passed", doctor.stdout), doctor.stdout + doctor.stderr
    verified = lab.host.ssh("sudo palisadectl audit verify", check=False)
    assert verified.returncode == 0 and "ok " in verified.stdout, verified.stdout + verified.stderr
    # The app restarted with the runbook's last step: wait for it to answer (a 502 until it listens).
    for _ in range(60):
        _, status, _, _ = _https_get(lab, "/health/ready")
        if status == 200:
            break
        time.sleep(2)
    assert status == 200
    # Upgrades (one rolled back), KEK and password rotations, a restore: still no secret in any log.
    assert _secrets_in_logs(lab) == []
