"""Secrets and keys: where third-party credentials and the key-encryption key come from.

- `app.crypto.secrets`: the `SecretProvider` interface (`get(name) -> SecretValue`) and its
  implementations: Azure Key Vault via workload / managed identity, owner-only files on-prem
  (also systemd credentials), environment variables in development only.
- `app.crypto.kek`: the `KeyWrapper` interface that wraps per-tenant data keys under a
  key-encryption key that never leaves its vault (Azure Key Vault RSA-OAEP-256, or local AES key
  wrap from owner-only files; an HSM is anything else implementing the protocol).
- `app.crypto.envelope` / `app.crypto.datakeys`: the AES-256-GCM envelope format and the per-tenant
  data keys, wrapped through a `KeyWrapper`.

The Azure SDKs are imported only by the classes that use them, so importing this package stays cheap.
"""

from __future__ import annotations
