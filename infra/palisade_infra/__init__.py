"""Palisade on Azure behind Cloudflare, as Pulumi component resources.

Never imports `app/`: the contract with the application is the set of environment variables and
Key Vault secret names in `hosting.py` and `defaults.py`.
"""
