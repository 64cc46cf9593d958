"""site.yml and upgrade.yml across several hosts: one PostgreSQL host (db1) and two app hosts (app1,
app2), each a real Debian 12 host booted with systemd-nspawn, all on one test network (testhost.py).

The tests run in order and share the hosts: install all three; the admin database URL only on the
migration host (app1); the key-encryption key created on one app host and copied to the other, so a
credential stored through app1 reads back through app2; `site.yml --limit palisade` (the database
play left out) leaves a working install; an upgrade migrates the database once, before any host
switches, then switches the hosts one at a time; and a build that fails to start after its
migration ran leaves every host serving, with a report that says the migration was applied.
"""

from __future__ import annotations

import time
import uuid

import pytest
from site_lab import ISSUER, PROBE_COMMENT, SERVER_NAME, Lab, api, https_request, lab_on, source_copy

pytestmark = pytest.mark.converge

DB, APPS = "db1", ["app1", "app2"]


@pytest.fixture(scope="module")
def lab(ansible_env, tmp_path_factory):
    with lab_on(tmp_path_factory.mktemp("multihost"), ansible_env, [DB, *APPS], postgresql=[DB], palisade=APPS) as lab:
        lab.site = {
            "postgresql_listen_addresses": ["localhost", lab.hosts[DB].ip],
            "postgresql_hba_app_networks": [f"{lab.hosts[name].ip}/32" for name in APPS],
            "palisade_database_host": DB,  # /etc/hosts on the test network; the certificate names it
        }
        lab.write_inventory()
        yield lab


def _ok(run) -> str:
    return f"{run.playbook} failed (log {run.log}):\n{run.tail()}"


def _health(lab: Lab, name: str) -> int:
    """The status of /health/ready through that app host's nginx, over TLS 1.3."""
    request = f"GET /health/ready HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n".encode()
    return https_request(lab.hosts[name], request)[0]


def _health_after_start(lab: Lab, name: str, attempts: int = 60) -> int:
    """The health status once the app has had a chance to start (nginx answers 502 until then)."""
    for _ in range(attempts):
        if (status := _health(lab, name)) == 200:
            return status
        time.sleep(1)
    return status


def _release(lab: Lab, name: str) -> str:
    return lab.hosts[name].ssh("readlink /opt/palisade/current").stdout.strip()


def _psql(lab: Lab, sql: str) -> str:
    return lab.hosts[DB].ssh(f"sudo -u postgres psql -XAtq -d palisade -c \"{sql}\"").stdout.strip()


def test_site_converges_on_a_database_host_and_two_app_hosts(lab):
    run = lab.playbook("site.yml")
    assert run.returncode == 0, _ok(run)
    assert set(run.recap) == {DB, *APPS}
    assert all(stats["failed"] == 0 and stats["unreachable"] == 0 for stats in run.recap.values())
    assert {name: _health(lab, name) for name in APPS} == {"app1": 200, "app2": 200}
    for name in APPS:
        doctor = lab.hosts[name].ssh("sudo palisadectl doctor", check=False)
        assert doctor.returncode == 0, f"{name}: {doctor.stdout}{doctor.stderr}"
    assert lab.hosts[DB].proxy.refused == [], f"a host tried to reach hosts off the allow-list: {lab.hosts[DB].proxy.refused}"


def _credential_files(lab: Lab, name: str) -> list[str]:
    return lab.hosts[name].ssh("sudo ls /etc/palisade/credentials").stdout.split()


def test_only_the_migration_host_holds_the_admin_database_url(lab):
    """app1 (palisade_migration_host: the first app host) has the admin URL and runs the migrations;
    app2 has no admin credential at all, not even the admin password anywhere under /etc/palisade,
    and its palisadectl says where migrations run instead of trying."""
    assert {"admin-database-url", "app-role-url", "database-url"} <= set(_credential_files(lab, "app1"))
    on_app2 = _credential_files(lab, "app2")
    assert "database-url" in on_app2
    assert "admin-database-url" not in on_app2 and "app-role-url" not in on_app2, on_app2
    # The password goes to grep on standard input: no command line (which sudo logs) carries it.
    found = lab.hosts["app2"].ssh("sudo grep -rlF -f - /etc/palisade", check=False, input=lab.admin_password + "\n")
    assert found.returncode == 1 and found.stdout == "", f"the admin password is on app2 in {found.stdout.split()}"
    refused = lab.hosts["app2"].ssh("sudo palisadectl migrate --list-pending", check=False)
    assert refused.returncode == 2 and "migrations run on app1" in refused.stderr, refused.stdout + refused.stderr


def _kek_digests(lab: Lab, name: str) -> str:
    return lab.hosts[name].ssh("sudo sh -c 'cd /etc/palisade/kek && stat -c \"%n %a %U\" * && sha256sum *'").stdout


def test_a_credential_stored_through_app1_reads_back_through_app2(lab):
    """The key-encryption key created on one app host was copied to the other (same files, modes and
    bytes): a provider credential stored through app1's nginx reads back through app2's."""
    digests = _kek_digests(lab, "app1")
    assert "kek-1.key 600 palisade" in digests
    assert _kek_digests(lab, "app2") == digests
    created = lab.hosts["app1"].ssh(f"sudo palisadectl tenant create --name Acme --slug acme --admin-issuer {ISSUER} "
                                    "--admin-subject alice", check=False)
    assert created.returncode == 0, created.stdout + created.stderr
    tenant_id = _psql(lab, "select id from tenants where slug = 'acme'")
    token = lab.idp.token("alice")
    status, workspace = api(lab.hosts["app1"], "POST", f"/tenants/{tenant_id}/workspaces", token, {"name": "Keys", "slug": "keys"})
    assert status == 201, workspace
    secret = "sk-multihost-" + uuid.uuid4().hex
    lab.secrets_set.append(secret)
    base = f"/tenants/{tenant_id}/workspaces/{workspace['id']}/credentials"
    status, credential = api(lab.hosts["app1"], "POST", base, token, {"provider": "openai", "label": "multihost", "secret": secret})
    assert status == 201, credential
    status, read = api(lab.hosts["app2"], "GET", f"{base}/{credential['id']}", token)
    assert status == 200, read
    assert (read["fingerprint"], read["last4"]) == (credential["fingerprint"], secret[-4:])
    lab.kek = {"credential": f"{base}/{credential['id']}", "fingerprint": credential["fingerprint"]}


def test_site_limited_to_the_app_hosts_keeps_a_working_install(lab):
    """`site.yml --limit palisade` leaves the PostgreSQL play out. It used to rewrite the database
    URLs with sslrootcert=system (no certificate fact from that play), which cannot verify the
    self-signed server, so the app failed on its next start. Now the app hosts read the certificate
    from the database host: nothing changes, and a restart comes back."""
    run = lab.playbook("site.yml", "--limit", "palisade")
    assert run.returncode == 0, _ok(run)
    assert set(run.recap) == set(APPS)
    changed = {host: stats["changed"] for host, stats in run.recap.items()}
    assert set(changed.values()) == {0}, f"--limit palisade changed {changed}: {run.changed_tasks()}"
    for name in APPS:
        lab.hosts[name].ssh("sudo systemctl restart palisade.service")
        assert _health_after_start(lab, name) == 200, f"{name} did not come back after a restart"


def test_upgrade_migrates_once_before_any_host_switches(lab):
    """N -> N+1 where N+1 adds a migration: it is applied once, on app1, before either host switches
    (the task that applies it comes before the first switch, and runs on app1 only); then app1 and
    app2 switch in turn. Both serve N+1, the data and the stored credential are kept."""
    new = f"{lab.versions[0]}.post1"
    lab.newer_source = source_copy(lab.workdir / f"src-{new}", version=new, probe_migration=True)
    run = lab.playbook("upgrade.yml", "-e", f"palisade_source_dir={lab.newer_source}")
    assert run.returncode == 0, _ok(run)
    lab.versions.append(new)
    migrate_at = run.output.index("TASK [palisade : Apply the migrations with the admin role")
    switches = [i for i in range(len(run.output)) if run.output.startswith("TASK [palisade : Point current at the new release", i)]
    assert len(switches) == 2 and migrate_at < switches[0], "the database was not migrated before the first switch"
    migrate_lines = run.output[migrate_at:].split("\n\n", 1)[0]
    assert "changed: [app1" in migrate_lines and "app2" not in migrate_lines, migrate_lines
    assert {name: _release(lab, name) for name in APPS} == {"app1": f"releases/{new}", "app2": f"releases/{new}"}
    assert _psql(lab, "select obj_description('tenants'::regclass)") == PROBE_COMMENT
    assert _psql(lab, "select slug from tenants order by slug") == "acme"
    assert {name: _health(lab, name) for name in APPS} == {"app1": 200, "app2": 200}
    status, read = api(lab.hosts["app2"], "GET", lab.kek["credential"], lab.idp.token("alice"))
    assert status == 200 and read["fingerprint"] == lab.kek["fingerprint"], read


def test_a_failure_after_the_migration_leaves_every_host_serving(lab):
    """N+1 -> a build whose migration applies and whose doctor passes, but which fails to start: app1
    goes back to N+1, app2 is never touched, both serve; the report says which step failed, that the
    migration WAS applied, and which release each host runs."""
    running, broken = lab.versions[-1], f"{lab.versions[0]}.post2"
    source = source_copy(lab.workdir / f"src-{broken}", version=broken, base=lab.newer_source, broken=True,
                         probe_migration=True, probe_revision="9901_ansible_upgrade_probe")
    run = lab.playbook("upgrade.yml", "-e", f"palisade_source_dir={source}", "-e", "palisade_health_timeout_seconds=30")
    assert run.returncode != 0, "the broken build was not refused"
    assert "UPGRADE FAILED on app1: Check the app answers over HTTPS through the proxy" in run.output, run.tail()
    assert f"the migrations of {broken} WERE applied by this run (9901_ansible_upgrade_probe)" in run.output
    assert "No migration was applied" not in run.output and "no migration was applied" not in run.output
    assert f"app1 is back on {running}" in run.output
    assert f"app1: {running}, answers its health check" in run.output, run.tail()
    assert f"app2: {running}, answers its health check" in run.output, run.tail()
    assert "TASK [palisade : Point current at the new release]" in run.output
    assert run.output.count("TASK [palisade : Point current at the new release]") == 1  # app2 never switched
    assert _psql(lab, "select version_num from alembic_version") == "9901_ansible_upgrade_probe"
    assert {name: _release(lab, name) for name in APPS} == {"app1": f"releases/{running}", "app2": f"releases/{running}"}
    assert {name: _health(lab, name) for name in APPS} == {"app1": 200, "app2": 200}
    assert _psql(lab, "select slug from tenants order by slug") == "acme"
