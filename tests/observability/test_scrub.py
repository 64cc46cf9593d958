"""The scrubber: realistic leaks disappear, look-alikes survive, hostile input cannot stall it."""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass
from typing import ClassVar

import pytest

from app.observability import scrub as scrub_module
from app.observability.scrub import REDACTED, is_secret_key, scrub, scrub_text


def _b64url(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


# Format-valid fakes; none of them was ever a real credential.
JWT = ".".join(
    [
        _b64url({"alg": "RS256", "kid": "k1"}),
        _b64url({"sub": "u-1", "email": "x@example.com"}),
        "c2lnbmF0dXJlLWJ5dGVzLWhlcmUtMTIzNDU2",
    ]
)
JWT_PAYLOAD = JWT.split(".")[1]
ANTHROPIC = "sk-ant-api03-" + "Xq7vR2mPz9LkT4wB8nYc1dFh6" * 3 + "AbCdEfGhIjKlMnOpQrS-_AA"
OPENAI_LEGACY = "sk-" + "Zx8Qw2Er4Ty6Ui8O" + "T3BlbkFJ" + "Pa1Sd3Fg5Hj7Kl9Zx2Cv4Bn6"
OPENAI_PROJECT = "sk-proj-" + "Gh7Jk2Lm9Np4Qr6St8Uv1Wx3Yz5Ab0Cd" * 4 + "_-T3BlbkFJ" + "Ef2Gh4Ij6Kl8Mn0Op"
GOOGLE = "AIza" + "SyD4f9Kq2Lm7Np1Rt6Vx8Zb3Cd5Ef0Gh2Jk"  # "AIza" + 35
AZURE_STORAGE_KEY = base64.b64encode(bytes(range(64))).decode()  # 88 characters, like the real ones
AZURE_SAS_SIG = "Fq3%2BzX9kLm2Np4Qr6St8Uv0Wx2Yz4Ab6Cd8Ef0Gh%3D"
AZURE_HEX_KEY = "9f86d081884c7d659a2feaa0c55ad015"
# 52 characters, the "JQQJ99" signature, then 26 more: 84 in all.
AZURE_AIS_KEY = "Ab3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1eF3hJ5kM7nP9rS1tV3xY5z" + "JQQJ99" + "BEACYeBjFXJ3w3AAAAACOGbC2q"
ENTRA_SECRET = "Xy1" + "8Q~" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3z"
PADDLE_LIVE = "pdl_live_apikey_01gtgztp8f4kek3yd4g1wrksa3_q6TGTJyvoIz7LDtXT65bX7_AQO"
PADDLE_SANDBOX = "pdl_sdbx_apikey_01hx9yq2m3n4p5r6s7t8v9w0xy_Zk3Jd9Qw8Lp2Xy7Vb4Nm1Rt_K2z"
PADDLE_WEBHOOK = "pdl_ntfset_01hv8x2k3m4n5p6q7r8s9t0v1w_Zk3Jd9+Qw8Lp2/Xy7Vb4Nm1Rt6"
CLOUDFLARE_SCANNABLE = "cfut_" + "Zk3Jd9Qw8Lp2Xy7Vb4Nm1Rt6Hs5Gf4Dc3Ea2Wq1Pl" + "a1b2c3d4"
CLOUDFLARE_LEGACY = "Rk2Lm8Np4Qr6St1Uv3Wx5Yz7Ab9Cd0Ef2Gh4Ij6K"  # 40 characters, no prefix
CLOUDFLARE_GLOBAL = "1e2d3c4b5a6f7e8d9c0b1a2f3e4d5c6b7a8f9"  # 37 hex, no prefix
CLOUDFLARE_ORIGIN_CA = "v1.0-" + "0a1b2c3d4e5f6a7b8c9d0e1f" + "-" + ("0123456789abcdef" * 10)[:146]
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
AWS_ACCESS = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
GITHUB = "ghp_" + "Aa1Bb2Cc3Dd4Ee5Ff6Gg7Hh8Ii9Jj0Kk1Ll2M"
STRIPE = "sk_live_" + "51HqLyjWDarjtT1zdp7dcXy0"
PEM_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"
PEM = f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n{PEM_BODY}\n-----END PRIVATE KEY-----"


@dataclass(frozen=True)
class Leak:
    """A line that leaks `secrets`; after scrubbing none may remain, and `marker` must appear."""

    name: str
    text: str
    secrets: tuple[str, ...]
    marker: str = "[REDACTED"  # any marker, typed or not


# One leak per line, so the corpus reads (and grows) as a table.
# fmt: off
LEAKS: list[Leak] = [
    # e-mail addresses
    Leak("email in prose", "invite sent to alice.smith+billing@example.co.uk by admin", ("alice.smith+billing@example.co.uk", "alice.smith"), "[REDACTED:email]"),
    Leak("url-encoded email", "GET /invite?email=bob%40corp.example.com&ws=1", ("bob%40corp.example.com",), "[REDACTED:email]"),
    Leak("email in angle brackets", "From: Carol <carol@mail.example.org>", ("carol@mail.example.org",), "[REDACTED:email]"),
    # tokens
    Leak("jwt in prose", f"token rejected: {JWT} (expired)", (JWT, JWT_PAYLOAD), "[REDACTED:jwt]"),
    Leak("jwt in a query string", f"/callback?id_token={JWT}&state=xyz", (JWT_PAYLOAD,)),
    Leak("bearer header", "Authorization: Bearer 8f2a0c1e9b7d4f6a8c0e2b4d6f8a0c1e", ("8f2a0c1e9b7d4f6a8c0e2b4d6f8a0c1e",)),
    Leak("bearer in prose", "retrying with bearer ya8Kd92jLmQz0pXw", ("ya8Kd92jLmQz0pXw",), "[REDACTED:bearer]"),
    Leak("basic header", "authorization: Basic YWxpY2U6czNjcjN0UGFzcw==", ("YWxpY2U6czNjcjN0UGFzcw",)),
    # vendor keys
    Leak("anthropic key", f"ANTHROPIC key {ANTHROPIC} rejected", (ANTHROPIC, ANTHROPIC[14:40]), "[REDACTED:anthropic_key]"),
    Leak("openai legacy key", f"openai.AuthenticationError: Incorrect API key provided: {OPENAI_LEGACY}", (OPENAI_LEGACY, "T3BlbkFJ"), "[REDACTED:openai_key]"),
    Leak("openai project key", f"using {OPENAI_PROJECT}", (OPENAI_PROJECT[8:60],), "[REDACTED:openai_key]"),
    Leak("google api key", f"https://maps.example.com/api?key={GOOGLE}", (GOOGLE,)),
    Leak("google api key in prose", f"quota exceeded for {GOOGLE}.", (GOOGLE,), "[REDACTED:google_key]"),
    Leak(
        "azure storage connection string",
        f"DefaultEndpointsProtocol=https;AccountName=palisade;AccountKey={AZURE_STORAGE_KEY};EndpointSuffix=core.windows.net",
        (AZURE_STORAGE_KEY, AZURE_STORAGE_KEY[:40]),
    ),
    Leak("azure sas url", f"PUT https://acct.blob.core.windows.net/uploads/a.pdf?sv=2022-11-02&sp=cw&se=2030-01-01&sig={AZURE_SAS_SIG}", (AZURE_SAS_SIG,)),
    Leak("azure service bus key", "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey=q8Zx2Lm4Np6Rt8Vw0Yb2Dc4Fe6Hg8Jk0Lm2Np4Rt6=", ("q8Zx2Lm4Np6Rt8Vw0Yb2Dc4Fe6Hg8Jk0Lm2Np4Rt6",)),
    Leak("azure cognitive key header", f"Ocp-Apim-Subscription-Key: {AZURE_HEX_KEY}", (AZURE_HEX_KEY,)),
    Leak("azure openai api-key header", f"headers={{'api-key': '{AZURE_HEX_KEY}'}}", (AZURE_HEX_KEY,)),
    Leak("azure annotated key", f"key {AZURE_AIS_KEY} is invalid", (AZURE_AIS_KEY,), "[REDACTED:azure_key]"),
    Leak("entra client secret", f"AADSTS7000215 secret {ENTRA_SECRET}", (ENTRA_SECRET,), "[REDACTED:azure_client_secret]"),
    Leak("paddle live key", f"Authorization: Bearer {PADDLE_LIVE}", (PADDLE_LIVE, "q6TGTJyvoIz7LDtXT65bX7")),
    Leak("paddle sandbox key in prose", f"paddle said 403 for {PADDLE_SANDBOX}", (PADDLE_SANDBOX,), "[REDACTED:paddle_key]"),
    Leak("paddle webhook secret", f"verifying with {PADDLE_WEBHOOK}", (PADDLE_WEBHOOK, "Zk3Jd9+Qw8Lp2"), "[REDACTED:paddle_secret]"),
    Leak("cloudflare scannable token", f"wrangler: {CLOUDFLARE_SCANNABLE}", (CLOUDFLARE_SCANNABLE,), "[REDACTED:cloudflare_token]"),
    Leak("cloudflare legacy token by name", f"CLOUDFLARE_API_TOKEN={CLOUDFLARE_LEGACY}", (CLOUDFLARE_LEGACY,)),
    Leak("cloudflare global key header", f"X-Auth-Key: {CLOUDFLARE_GLOBAL}", (CLOUDFLARE_GLOBAL,)),
    Leak("cloudflare origin ca key", f"origin ca {CLOUDFLARE_ORIGIN_CA}", (CLOUDFLARE_ORIGIN_CA[:40],), "[REDACTED:cloudflare_origin_ca_key]"),
    Leak("turnstile secret by name", "turnstile_secret_key=0x4AAAAAAAbcdEFGhijKLMnopQRStuvWXyz", ("0x4AAAAAAAbcdEFGhijKLMnopQRStuvWXyz",)),
    Leak("webhook signing secret", f"STRIPE_WEBHOOK={WHSEC}", (WHSEC,), "[REDACTED:webhook_secret]"),
    Leak("aws access key", f"aws_access_key_id={AWS_ACCESS} region=eu-west-1", (AWS_ACCESS,)),
    Leak("aws access key in prose", f"InvalidClientTokenId for {AWS_ACCESS}", (AWS_ACCESS,), "[REDACTED:aws_access_key]"),
    Leak("aws secret key by name", f"aws_secret_access_key = {AWS_SECRET}", (AWS_SECRET,)),
    Leak("github token", f"git clone https://x-access-token:{GITHUB}@github.com/o/r.git", (GITHUB,)),
    Leak("stripe key", f"using {STRIPE}", (STRIPE,), "[REDACTED:stripe_key]"),
    Leak("pem private key", f"loaded key:\n{PEM}\nok", (PEM_BODY,), "[REDACTED:private_key]"),
    Leak("pem private key in a repr", "key = " + repr(PEM), (PEM_BODY,), "[REDACTED:private_key]"),
    # passwords in URLs
    Leak("database url", "postgresql+psycopg://palisade_app:Tr0ub4dor&3@db.internal:5432/palisade", ("Tr0ub4dor&3", "Tr0ub4dor"), "[REDACTED:password]"),
    Leak("redis url without user", "redis://:hunter2hunter2@cache:6379/0", ("hunter2hunter2",), "[REDACTED:password]"),
    Leak("password with an at sign", "amqp://guest:p@ss@w0rd@mq.internal/vhost", ("p@ss@w0rd", "ss@w0rd"), "[REDACTED:password]"),
    # secret-named fields in text
    Leak("key=value", "login failed password=hunter2 user=bob", ("hunter2",)),
    Leak("json", '{"client_secret": "s3cr3t-value with spaces", "client_id": "palisade"}', ("s3cr3t-value",)),
    Leak("json with escaped quote", '{"password": "pa\\"ss"}', ("pa\\", 'ss"}')),
    Leak("double-encoded json", '{\\"refresh_token\\": \\"rt-9f8e7d6c\\"}', ("rt-9f8e7d6c",)),
    Leak("python repr", "{'refresh_token': 'rt-123456', 'expires_in': 3600}", ("rt-123456",)),
    Leak("env var", "PALISADE_ALERT_WEBHOOK_SECRET=whatever-it-is-123", ("whatever-it-is-123",)),
    Leak("yaml", "db_password: 'correct horse battery staple'", ("correct horse",)),
    Leak("access token in query", "GET /api/v1/files?access_token=opaque0123456789&page=2", ("opaque0123456789",)),
    Leak("cookie header", "Cookie: theme=dark; session_id=abc123def456", ("abc123def456",)),
    Leak("set-cookie header", "Set-Cookie: __Host-palisade=abc123def456; Path=/; Secure", ("abc123def456",)),
    Leak("camelCase name", 'apiKey: "live-9f8e7d6c5b4a"', ("live-9f8e7d6c5b4a",)),
    Leak("name with prefix and digits", "X-Hub-Signature-256: sha256=0123456789abcdef", ("0123456789abcdef",)),
    Leak("sentry dsn", "dsn=https://0123456789abcdef0123456789abcdef@o1.ingest.sentry.io/42", ("0123456789abcdef0123456789abcdef",)),
    Leak("prose label", "your API key: k-0f9e8d7c6b5a", ("k-0f9e8d7c6b5a",)),
    Leak("asgi header pairs", "[(b'authorization', b'Token abc123xyz'), (b'cookie', b'theme=dark; sid=s3cr3t')]", ("abc123xyz", "s3cr3t")),
]
# fmt: on

# Must come out byte for byte as they went in.
LOOK_ALIKES: list[str] = [
    "tenant 3f1c2d4e-5b6a-4c7d-8e9f-0a1b2c3d4e5f created",
    "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "deployed commit 888cbd7f1c2d4e5b6a4c7d8e9f0a1b2c3d4e5f60 (888cbd7)",
    "correlation_id=0123456789abcdef0123456789abcdef",
    "sk-1.2 is older than sk-2.0; scikit-learn is sk-learn",
    "skeleton screens while the token bucket refills",
    "max_tokens=1024 tokens: 17 token_type=Bearer",
    "https://user@host/path",
    "postgresql://palisade_app@localhost:5432/palisade",
    "http://127.0.0.1:8000/health/live",
    "x = a@b  # matrix product",
    "<img src='/static/logo@2x.png'>",
    "npm install @scope/pkg@1.2.3 and image@sha256:9f86d081884c7d65",
    "2024-05-01T12:34:56.789Z and 2024-05-01T12:34:56+00:00",
    "payload SGVsbG8sIFdvcmxkIQ== decoded",
    "header only eyJhbGciOiJIUzI1NiJ9 is not a token",
    "The Bearer scheme (RFC 6750) sends Bearer tokens; Basic authentication is disabled.",
    "Authorization header missing",
    "password reset requested; password_reset_required=true",
    "secret_name=db-password tokens_used=12",
    "AccountName=palisade;EndpointSuffix=core.windows.net",
    "sv=2022-11-02&sp=r&se=2030-01-01",
    "monkey keyboard passport",
    "v1.0-beta released, python 3.11.9",
    "2606:4700::/32 and 203.0.113.7:50000",
    "/work/main/app/auth/oidc.py line 42",
    "Mode: production, log_level=INFO",
]


class TestLeaksAreRemoved:
    @pytest.mark.parametrize("leak", LEAKS, ids=[leak.name for leak in LEAKS])
    def test_secret_is_gone(self, leak: Leak) -> None:
        out = scrub_text(leak.text)
        for secret in leak.secrets:
            assert secret not in out, out
        assert leak.marker in out, out

    @pytest.mark.parametrize("leak", LEAKS, ids=[leak.name for leak in LEAKS])
    def test_scrubbing_twice_changes_nothing(self, leak: Leak) -> None:
        once = scrub_text(leak.text)
        assert scrub_text(once) == once

    def test_url_keeps_user_and_host(self) -> None:
        assert scrub_text("postgresql://app:s3cr3t@db:5432/x") == "postgresql://app:[REDACTED:password]@db:5432/x"

    def test_field_name_and_quotes_are_kept(self) -> None:
        assert scrub_text('{"password": "hunter2", "user": "bob"}') == '{"password": "[REDACTED]", "user": "bob"}'

    def test_auth_scheme_is_kept(self) -> None:
        assert scrub_text("Authorization: Bearer 8f2a0c1e9b7d4f6a") == "Authorization: Bearer [REDACTED:bearer]"


class TestLookAlikesSurvive:
    @pytest.mark.parametrize("text", LOOK_ALIKES)
    def test_unchanged(self, text: str) -> None:
        assert scrub_text(text) == text


class TestSecretNames:
    @pytest.mark.parametrize(
        "name",
        ["password", "PASSWORD", "db_password", "passwd", "client_secret", "clientSecret", "access_token", "refresh-token",
         "id_token", "api_key", "apiKey", "X-Api-Key", "Authorization", "Proxy-Authorization", "cookie", "Set-Cookie",
         "private_key", "dsn", "sentry_dsn", "X-Paddle-Signature", "x-hub-signature-256", "AccountKey", "sig",
         "Ocp-Apim-Subscription-Key", "aws_secret_access_key", "b'authorization'"],
    )  # fmt: skip
    def test_secret(self, name: str) -> None:
        assert is_secret_key(name)

    @pytest.mark.parametrize(
        "name",
        [
            "token_type",
            "max_tokens",
            "tokens_used",
            "secret_name",
            "user",
            "email",
            "tenant_id",
            "correlation_id",
            "key_id",
            "signed_at",
            "keyboard",
        ],
    )
    def test_not_secret(self, name: str) -> None:
        assert not is_secret_key(name)


class TestStructures:
    def test_secret_named_entries_lose_their_value_at_any_depth(self) -> None:
        event = {
            "Authorization": "Bearer abc",
            "nested": [{"Client-Secret": {"anything": "at all"}, "n": 1}],
            "pairs": [("x-api-key", "abc"), ["cookie", "theme=dark"]],
            "PASSWORD": 123456,
        }
        assert scrub(event) == {
            "Authorization": REDACTED,
            "nested": [{"Client-Secret": REDACTED, "n": 1}],
            "pairs": [("x-api-key", REDACTED), ["cookie", REDACTED]],
            "PASSWORD": REDACTED,
        }

    def test_text_values_and_keys_are_scrubbed(self) -> None:
        out = scrub({"note": f"from alice@example.com with {JWT}", "bob@example.com": 1})
        assert out == {"note": "from [REDACTED:email] with [REDACTED:jwt]", "[REDACTED:email]": 1}

    def test_missing_secrets_stay_visible(self) -> None:
        # "the header was empty" is a useful fact and reveals nothing.
        assert scrub({"token": None, "password": ""}) == {"token": None, "password": ""}

    def test_other_values_keep_their_type(self) -> None:
        assert scrub({"n": 1, "f": 1.5, "b": True, "none": None, "t": ("a", 1)}) == {
            "n": 1,
            "f": 1.5,
            "b": True,
            "none": None,
            "t": ("a", 1),
        }

    def test_bytes_and_objects_become_scrubbed_text(self) -> None:
        class Settings:
            def __str__(self) -> str:
                return "Settings(database_url='postgresql://app:pw123@db/x', alert_webhook_secret='s3cr3t')"

        out = scrub([b"password=hunter2", Settings()])
        assert out == [
            "password=[REDACTED]",
            "Settings(database_url='postgresql://app:[REDACTED:password]@db/x', alert_webhook_secret='[REDACTED]')",
        ]

    def test_cycles_do_not_recurse_forever(self) -> None:
        loop: list[object] = ["alice@example.com"]
        loop.append(loop)
        assert "alice@example.com" not in str(scrub(loop))


class TestHostileInput:
    # Each is repeated to 1 MB. A backtracking pattern would take hours on some of these; the
    # test only needs to finish.
    SEEDS: ClassVar[list[str]] = [
        "a", " ", "a@", "@a.", "a%40a.", "eyJa.", "sk-", "sk-ant-", "://a:", ":@", "Bearer ", "password=", 'password="',
        'password\\"', 'a="', "a=", "'password', ", "-----BEGIN PRIVATE KEY-----", "8Q~", "JQQJ9", "api key", "x@y.",
        # personal-data shapes: digit runs of every grouping, and their prefixes
        "1", "1 ", "1-", "+1", "+1 ", "+(1)", "(415) ", "06 ", "4111 ", "DE89 ", "AB12", "AB 12 ",
    ]  # fmt: skip

    @pytest.mark.parametrize("seed", SEEDS)
    def test_one_megabyte_line(self, seed: str) -> None:
        text = (seed * (1_000_000 // len(seed) + 1))[:1_000_000]
        assert isinstance(scrub_text(text), str)


def _scrub_every_rule(text: str) -> str:
    """`scrub_text` as defined, without its one-pass hint filter: each rule's own hint test."""
    lowered = text.lower()
    for rule in scrub_module._ALL_RULES:
        if any(hint in lowered for hint in rule.hints):
            text = rule.pattern.sub(rule.replacement, text)
    return scrub_module.scrub_pii(text)


_HINTS = sorted({hint for rule in scrub_module._ALL_RULES for hint in rule.hints})


class TestHintFilter:
    """The one-pass filter only skips text in which no rule's hint occurs: the result never changes."""

    @pytest.mark.parametrize("hint", _HINTS)
    def test_every_hint_is_found_anywhere_in_any_case(self, hint: str) -> None:
        for text in (hint, f"x{hint}", f"{hint}y", f"a b {hint.upper()} c", f"{hint[:-1]} {hint.title()}"):
            assert scrub_module._ANY_HINT.search(text.lower()) is not None, text

    def test_text_without_hints_is_not_searched(self) -> None:
        for text in ("01000000-0000-0000-0000-000000000000", "content_change", "tenant_id", "2026-01-02T03:04:05.678901+00:00"):
            assert scrub_module._ANY_HINT.search(text.lower()) is None

    @pytest.mark.parametrize("text", [leak.text for leak in LEAKS] + LOOK_ALIKES)
    def test_corpus_scrubs_as_without_the_filter(self, text: str) -> None:
        assert scrub_text(text) == _scrub_every_rule(text)

    def test_random_text_scrubs_as_without_the_filter(self) -> None:
        rng = random.Random(20261204)
        pieces = [*_HINTS, *(leak.text for leak in LEAKS), *LOOK_ALIKES, "=", ": ", '"', "'", " ", "İ", "ß", "Ü"]
        alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.:/@%=\"'\\\n~+,;&<>(){}[]İßü"
        for _ in range(5000):
            parts = [rng.choice(pieces) if rng.random() < 0.5 else "".join(rng.choices(alphabet, k=rng.randrange(20)))
                     for _ in range(rng.randrange(1, 6))]
            text = "".join(parts)
            text = text.upper() if rng.random() < 0.2 else text
            assert scrub_text(text) == _scrub_every_rule(text), text


@pytest.mark.parametrize(
    "name",
    ["tenant_id", "Client_Secret", "client-secret", "pass_word", "PASS.WORD2", "api key", "Tøken", "tökén", "token_",
     "_", "", "sig_1", "İ_token", "x__auth__", "SESSION_ID9", "api_key_v2", "a1b2", "émail", "KEY\u0130"],
)  # fmt: skip
def test_secret_names_normalize_as_defined(name: str) -> None:
    normalized = scrub_module._NOT_ALNUM.sub("", name.lower()).rstrip("0123456789")
    assert is_secret_key(name) == normalized.endswith(scrub_module._SECRET_SUFFIXES)


def test_registered_names_scrub_as_unregistered_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    event = {"password": "hunter2", "tenant_id": "t", "event": f"to alice@example.com {JWT}", "api_key": "", "note": "x"}
    monkeypatch.setattr(scrub_module, "_KNOWN_NAMES", {})
    plain = scrub(event)
    scrub_module.register_names([*event, "bob@example.com"])
    assert scrub(event) == plain == {"password": REDACTED, "tenant_id": "t", "event": "to [REDACTED:email] [REDACTED:jwt]",
                                     "api_key": "", "note": "x"}
    assert scrub({"bob@example.com": 1}) == {"[REDACTED:email]": 1}


# ---- personal data with a shape: masked when the checksum holds, kept when it does not ----

# (kind, text as it might appear in a log line). Every number is a published test or example value.
# fmt: off
PERSONAL: list[tuple[str, str]] = [
    ("phone", "call back on +44 20 7946 0958 please"),
    ("phone", "mobile +33 6 12 34 56 78"),
    ("phone", "tel:+14155550132"),
    ("phone", "+1 (415) 555-0132"),
    ("phone", "office (415) 555-0132, ext 4"),
    ("phone", "fax 415-555-0132"),
    ("phone", "415.555.0132"),
    ("phone", "portable 06 12 34 56 78"),
    ("phone", "portable 06.12.34.56.78"),
    ("phone", "0612345678"),
    ("phone", "London 020 7946 0958"),
    ("phone", "mobile 07700 900123"),
    ("card", "Visa 4111 1111 1111 1111"),
    ("card", "4111111111111111"),
    ("card", "5555-5555-5555-4444"),
    ("card", "Mastercard 2223 0031 2200 3222"),
    ("card", "Amex 3782 822463 10005"),
    ("card", "Discover 6011111111111117"),
    ("card", "JCB 3530111333300000"),
    ("card", "Diners 30569309025904"),
    ("card", "UnionPay 6200000000000005"),
    ("iban", "IBAN DE89 3704 0044 0532 0130 00, BIC COBADEFFXXX"),
    ("iban", "GB82WEST12345698765432"),
    ("iban", "pay to FR14 2004 1010 0505 0001 3M02 606"),
    ("iban", "NL91ABNA0417164300"),
    ("us_ssn", "SSN 536-22-1234 on file"),
    ("uk_nino", "NI number AB123456C"),
    ("uk_nino", "NINO JG 10 38 29 D"),
    ("fr_nir", "NIR 1 84 12 76 451 089 46"),
    ("fr_nir", "184127645108946"),
    ("fr_nir", "Ajaccio 2 84 12 2A 451 089 80"),
]
# The same shapes with a failing checksum or a rule broken: not that kind of data, kept as they are.
NEAR_MISSES: list[str] = [
    "4111 1111 1111 1112",          # Luhn fails
    "4111111111111112",
    "1234 5678 9012 3452",          # Luhn holds, but no issuer starts with 1
    "7000 0000 0000 0005",          # nor with 7
    "DE88 3704 0044 0532 0130 00",  # mod 97 fails
    "GB83WEST12345698765432",
    "NIR 1 84 12 76 451 089 47",    # key fails
    "000-12-3456",                  # SSN area 000
    "666-12-3456",                  # area 666
    "912-34-5678",                  # area 9xx
    "536-00-1234",                  # group 00
    "536-22-0000",                  # serial 0000
    "GB123456A",                    # NINO prefix never allocated
    "DA123456A",                    # D is no first letter
    "AB123456E",                    # suffix E
    "+44 20 79",                    # too few digits for a phone number
    "+1234567890123456789",         # too many (E.164 has at most 15)
    "123-456-7890",                 # no North American area code starts with 1
    "04 12 34 56",                  # a French number has 10 digits
]
# Ordinary log lines: each must come out byte for byte as it went in.
ORDINARY: list[str] = [
    "GET /api/v1/tenants/3f1c2d4e-5b6a-4c7d-8e9f-0a1b2c3d4e5f/documents?page=2 200 12.345 ms",
    "2026-01-02T03:04:05.678901+00:00 audit_event seq=1234567 hash=9f86d081884c7d659a2feaa0c55ad015",
    "epoch_ms=1718000000123 epoch_s=1718000000 duration_ms=1234567",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.109 Safari/537.36",
    "client 203.0.113.7:50000 and 2001:db8:85a3::8a2e:370:7334",
    "listening on 0.0.0.0:8000 (pid 123456)",
    "release palisade@0.1.0, python 3.11.9, psycopg 3.2.10",
    "rows=1000000 tenants=1000 ratio=1.2345678 p99=12.5",
    "id 12345678-1234-1234-1234-123456789012",
    "bucket 00000000000000000001 for key 1234567890",
    "window 2026-01-02 03:04:05 to 2026-01-02 03:09:05",
    "version 10.2.3.4567; build 20260102.1",
]
# fmt: on


class TestPersonalData:
    @pytest.mark.parametrize(("kind", "text"), PERSONAL, ids=[f"{k}: {t}" for k, t in PERSONAL])
    def test_masked(self, kind: str, text: str) -> None:
        out = scrub_text(text)
        assert f"[REDACTED:{kind}]" in out, out
        digits = "".join(ch for ch in text if ch.isdigit())
        assert sum(ch.isdigit() for ch in out) < len(digits) - 5, out  # the number itself is gone
        assert scrub_text(out) == out

    def test_words_around_the_number_are_kept(self) -> None:
        assert scrub_text("call back on +44 20 7946 0958 please") == "call back on [REDACTED:phone] please"
        assert scrub_text("IBAN DE89 3704 0044 0532 0130 00, BIC COBADEFFXXX") == "IBAN [REDACTED:iban], BIC COBADEFFXXX"

    @pytest.mark.parametrize("text", NEAR_MISSES)
    def test_near_miss_kept(self, text: str) -> None:
        assert scrub_text(text) == text

    @pytest.mark.parametrize("text", ORDINARY + LOOK_ALIKES)
    def test_ordinary_line_unchanged(self, text: str) -> None:
        assert scrub_text(text) == text

    def test_in_structures_too(self) -> None:
        event = {"event": "callback_requested", "phone": "+44 20 7946 0958", "details": {"iban": "GB82WEST12345698765432"}}
        assert scrub(event) == {"event": "callback_requested", "phone": "[REDACTED:phone]",
                                "details": {"iban": "[REDACTED:iban]"}}
