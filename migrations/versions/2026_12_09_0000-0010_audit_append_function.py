"""Audit events are appended through `private.audit_append` (the expand step; the REVOKE comes later).

Why (issue 16): the app role held INSERT on `audit_events` and INSERT, UPDATE on
`audit_chain_heads`, so whoever held its credentials could write a well-formed event with any
`seq` and `prev_hash` it chose, or move a chain head. Now the only way in is a SECURITY DEFINER
function, owned by the schema owner, that:

- refuses a tenant id other than the transaction's `app.tenant_id` (RLS already does, as long as
  the owner is subject to it; the explicit check keeps that true should the function's owner ever
  bypass row level security, e.g. a superuser migration role on-prem);
- locks the chain head (FOR UPDATE), creating it (seq 0, the genesis hash) for a chain's first
  event, and computes `seq` = head + 1, `prev_hash` = the head's hash and `hash` = SHA-256 of the
  canonical bytes exactly as the previous one-statement append did (app/audit/service.py and
  chain.py: the caller renders the canonical JSON around the link, `before` and `after`; the
  function puts in `"prev_hash":<head hash>,"seq":<seq>`). A caller that sends canonical bytes
  not matching the fields gains nothing: `palisade audit verify` recomputes every hash from the
  stored row and names the event altered;
- inserts the event and moves the head; returns (seq, prev_hash, hash).

It lives in the schema `private` (USAGE for the app role only, CREATE for nobody but its owner),
with `search_path = pg_catalog, pg_temp` and every table named with its schema. EXECUTE is revoked
from PUBLIC and granted to the app role only.

Expand/contract: this revision only adds the function, and this release appends through it. The
app role keeps INSERT on `audit_events` and INSERT, UPDATE on `audit_chain_heads` for now, because
a running install's previous release (the old Azure revision until the new one takes traffic, the
hosts of a rolling on-prem upgrade not yet upgraded) still appends directly; revoking them here
would fail every audited action of those until their turn. The contract step, a later release's
migration, revokes them once no supported release writes the chain directly (doctor then checks
it).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-09 00:00
"""

from __future__ import annotations

from alembic import op

from migrations.helpers import app_role

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SIGNATURE = (
    "private.audit_append(uuid, uuid, timestamp with time zone, text, text, text, bytea, bytea, uuid, text, uuid, text, text,"
    " text, text, text, inet, text, text, text, jsonb)"
)

BODY = """
DECLARE
  context_tenant uuid := nullif(current_setting('app.tenant_id', true), '')::uuid;
  head_seq bigint;
  head_hash text;
BEGIN
  IF p_tenant_id IS NULL OR context_tenant IS NULL OR p_tenant_id <> context_tenant THEN
    RAISE EXCEPTION 'audit append: tenant % is not the tenant of this transaction', p_tenant_id
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF p_before IS NULL OR p_after IS NULL THEN
    RAISE EXCEPTION 'audit append: the canonical form is required' USING ERRCODE = 'null_value_not_allowed';
  END IF;
  SELECT h.seq, h.hash INTO head_seq, head_hash FROM public.audit_chain_heads h WHERE h.tenant_id = p_tenant_id FOR UPDATE;
  IF NOT FOUND THEN
    INSERT INTO public.audit_chain_heads (tenant_id, seq, hash) VALUES (p_tenant_id, 0, repeat('0', 64))
      ON CONFLICT (tenant_id) DO NOTHING;
    SELECT h.seq, h.hash INTO head_seq, head_hash FROM public.audit_chain_heads h WHERE h.tenant_id = p_tenant_id FOR UPDATE;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'audit chain head of tenant % is not visible to this transaction', p_tenant_id
        USING ERRCODE = 'serialization_failure';
    END IF;
  END IF;
  event_seq := head_seq + 1;
  event_prev_hash := head_hash;
  event_hash := encode(pg_catalog.sha256(p_before
    || convert_to(to_json(head_hash)::text || ',"seq":' || event_seq::text, 'UTF8') || p_after), 'hex');
  INSERT INTO public.audit_events (tenant_id, id, seq, prev_hash, hash, occurred_at, category, action, outcome, workspace_id,
    actor_type, actor_user_id, actor_issuer, actor_subject, actor_role, target_type, target_id, client_ip, user_agent,
    correlation_id, trace_id, details)
  VALUES (p_tenant_id, p_id, event_seq, event_prev_hash, event_hash, p_occurred_at, p_category, p_action, p_outcome,
    p_workspace_id, p_actor_type, p_actor_user_id, p_actor_issuer, p_actor_subject, p_actor_role, p_target_type, p_target_id,
    p_client_ip, p_user_agent, p_correlation_id, p_trace_id, p_details);
  UPDATE public.audit_chain_heads SET seq = event_seq, hash = event_hash WHERE tenant_id = p_tenant_id;
END
"""

PARAMETERS = (
    "p_tenant_id uuid, p_id uuid, p_occurred_at timestamp with time zone, p_category text, p_action text, p_outcome text,"
    " p_before bytea, p_after bytea, p_workspace_id uuid DEFAULT NULL, p_actor_type text DEFAULT NULL, p_actor_user_id uuid DEFAULT NULL,"
    " p_actor_issuer text DEFAULT NULL, p_actor_subject text DEFAULT NULL, p_actor_role text DEFAULT NULL,"
    " p_target_type text DEFAULT NULL, p_target_id text DEFAULT NULL, p_client_ip inet DEFAULT NULL,"
    " p_user_agent text DEFAULT NULL, p_correlation_id text DEFAULT NULL, p_trace_id text DEFAULT NULL,"
    " p_details jsonb DEFAULT '{}',"
    " OUT event_seq bigint, OUT event_prev_hash text, OUT event_hash text"
)


def upgrade() -> None:
    role = app_role()
    op.execute("CREATE SCHEMA private")
    op.execute("REVOKE ALL ON SCHEMA private FROM PUBLIC")
    op.execute(f'GRANT USAGE ON SCHEMA private TO "{role}"')
    op.execute(
        f"CREATE FUNCTION private.audit_append({PARAMETERS}) LANGUAGE plpgsql VOLATILE SECURITY DEFINER"
        f" SET search_path = pg_catalog, pg_temp AS $body${BODY}$body$"
    )
    op.execute(f"REVOKE ALL ON FUNCTION {SIGNATURE} FROM PUBLIC")
    op.execute(f'GRANT EXECUTE ON FUNCTION {SIGNATURE} TO "{role}"')


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SIGNATURE}")
    op.execute("DROP SCHEMA private")
