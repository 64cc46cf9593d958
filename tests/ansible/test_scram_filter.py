"""The postgresql role's SCRAM verifier filter, checked the way a server checks a client (RFC 7677's
worked example), and its determinism and refusals (no converge host needed)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util

import pytest
from ansible.errors import AnsibleFilterError
from conftest import ANSIBLE_DIR

_spec = importlib.util.spec_from_file_location("scram", ANSIBLE_DIR / "roles/postgresql/filter_plugins/scram.py")
scram = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scram)

# RFC 7677, section 3: user "user", password "pencil".
CLIENT_FIRST_BARE = "n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
CLIENT_FINAL_WITHOUT_PROOF = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
CLIENT_PROOF = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
SERVER_SIGNATURE = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_the_verifier_accepts_the_rfc_7677_client_and_signs_as_its_server():
    verifier = scram.scram_sha256_verifier("pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    head, salt, keys = verifier.split("$")[0], verifier.split("$")[1], verifier.split("$")[2]
    assert (head, salt) == ("SCRAM-SHA-256", "4096:W22ZaJ0SNY7soEsUEjb6gQ==")
    stored_key, server_key = (base64.b64decode(part) for part in keys.split(":"))
    auth_message = f"{CLIENT_FIRST_BARE},{SERVER_FIRST},{CLIENT_FINAL_WITHOUT_PROOF}".encode()
    # What PostgreSQL does with the stored verifier: recover ClientKey from the proof, hash it, compare.
    client_signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    client_key = bytes(a ^ b for a, b in zip(base64.b64decode(CLIENT_PROOF), client_signature, strict=True))
    assert hashlib.sha256(client_key).digest() == stored_key
    assert base64.b64encode(hmac.new(server_key, auth_message, hashlib.sha256).digest()).decode() == SERVER_SIGNATURE


def test_the_same_password_and_role_give_the_same_verifier_and_others_do_not():
    first = scram.palisade_scram_verifier("correct horse battery staple", "palisade_app")
    assert first == scram.palisade_scram_verifier("correct horse battery staple", "palisade_app")  # reruns change nothing
    assert first != scram.palisade_scram_verifier("correct horse battery staple", "palisade_admin")
    assert first != scram.palisade_scram_verifier("correct horse battery stapler", "palisade_app")
    salt = base64.b64decode(first.split("$")[1].split(":")[1])
    assert len(salt) == 16
    assert first == scram.scram_sha256_verifier("correct horse battery staple", salt)
    assert "correct horse" not in first


@pytest.mark.parametrize("password", ["", "pässword-with-umlaut", "tab\tinside-the-password", "line\nbreak-password"])
def test_passwords_outside_printable_ascii_are_refused_without_echoing_them(password):
    with pytest.raises(AnsibleFilterError) as refused:
        scram.palisade_scram_verifier(password, "palisade_app")
    assert password not in str(refused.value) or not password
