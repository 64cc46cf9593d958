"""Third-party provider credentials of a workspace, stored envelope-encrypted, decrypted only at use."""
