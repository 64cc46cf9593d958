"""The one scrubber for logs and Sentry: secrets and e-mail addresses never leave the process.

Two mechanisms, applied together:

- by name: a mapping entry, `(name, value)` pair or `name=value` / `"name": "value"` text whose
  name ends in a secret word (`password`, `client_secret`, `X-Api-Key`, `AccountKey`, ...) loses
  its whole value to ``[REDACTED]``;
- by shape: tokens whose format identifies them (JWTs, vendor API keys with a prefix, PEM private
  keys, URL passwords, e-mail addresses) become a typed marker such as ``[REDACTED:jwt]``.

Formats without a prefix (legacy Cloudflare tokens, 32-hex Azure keys, AWS secret keys) are only
caught by the name they are given; guessing by entropy would eat UUIDs and digests.

Personal data with a recognisable shape is masked too (`_PII`, one pass over the text), each kind
only in the written forms listed there and, where the kind has one, only when its checksum holds:
phone numbers, payment card numbers (Luhn), IBANs (ISO 7064 mod 97-10), and three national ids —
US Social Security numbers, UK National Insurance numbers, French NIR (its 2-digit key). Names,
postal addresses and free text have no shape: this scrubber cannot find them, which is why Sentry
receives only allow-listed fields (app/observability/sentry.py) rather than scrubbed ones.

Every pattern is linear-time: quantifiers are bounded or possessive, each starts at a literal
prefix or a left-boundary lookbehind, so a hostile 1 MB log line cannot stall the process.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

REDACTED = "[REDACTED]"

# Names that hold secrets. A name matches when, lower-cased without separators and trailing
# digits, it ends in one of these: `alert_webhook_secret`, `X-Hub-Signature-256`, `apiKey`.
# "_" marks where a separator may sit in free text ("api key", "api-key", "api_key").
SECRET_NAMES: tuple[str, ...] = (
    "password", "passwd", "passphrase", "pwd", "password_hash", "passwords",
    "secret", "secrets", "secret_key", "private_key", "signing_key", "encryption_key", "master_key",
    "token", "jwt", "api_key", "auth", "auth_key", "authorization", "credential", "credentials",
    "cookie", "cookies", "session_id", "sessid",
    "access_key", "account_key", "shared_access_key", "subscription_key", "connection_string",
    "dsn", "signature", "sig",
)  # fmt: skip

_SECRET_SUFFIXES = tuple(name.replace("_", "") for name in SECRET_NAMES)
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")
_MAX_DEPTH = 32


def is_secret_key(name: str | bytes) -> bool:
    """Whether a field, header, cookie or variable of this name holds a secret."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    lowered = name.lower()
    normalized = lowered.replace("_", "")
    if not (normalized.isascii() and normalized.isalnum()):  # else it is all [a-z0-9] already
        normalized = _NOT_ALNUM.sub("", lowered)
    return normalized.rstrip("0123456789").endswith(_SECRET_SUFFIXES)


def _marker(kind: str) -> str:
    return f"[REDACTED:{kind}]"


def _looks_like_credential(word: str) -> bool:
    # "Bearer authentication" in prose must survive; real tokens carry digits, symbols or
    # mixed case (base64, JWTs, opaque keys).
    word = word.rstrip(".,")
    rest = word[1:]
    return any(c.isdigit() or c in "+/=_~.-" for c in word) or (rest != rest.lower() and rest != rest.upper())


def _auth_scheme(match: re.Match[str]) -> str:
    if not _looks_like_credential(match["cred"]):
        return match[0]
    return f"{match['scheme']} {_marker(match['scheme'].lower())}"


_B64URL = "A-Za-z0-9_-"
_START = rf"(?<![{_B64URL}])"  # left boundary: never start in the middle of a token


@dataclass(frozen=True)
class _Rule:
    # Lower-case substrings of which one must occur for the pattern to possibly match: a cheap
    # prefilter, since most log lines contain none of them.
    hints: tuple[str, ...]
    pattern: re.Pattern[str]
    replacement: str | Callable[[re.Match[str]], str]


# In order; earlier, more specific rules win (their markers are left alone by later ones).
_RULES: tuple[_Rule, ...] = (
    # PEM private keys, also inside reprs where newlines are the two characters "\n".
    _Rule(
        ("private key",),
        re.compile(
            r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY-----(?:[A-Za-z0-9+/=\s:,.\\]|-(?!----))*+"
            r"(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY-----)?"
        ),
        _marker("private_key"),
    ),
    # JWS (three segments) and JWE (five); the header is base64url JSON, so it starts "eyJ".
    _Rule(
        ("eyj",),
        re.compile(rf"{_START}eyJ[{_B64URL}]{{4,}}+\.[{_B64URL}]{{4,}}+(?:\.[{_B64URL}]*+){{1,3}}"),
        _marker("jwt"),
    ),
    # scheme://user:PASSWORD@host keeps the user and host. The password may itself hold "@"
    # (unencoded, as people paste them): it runs to the last "@" before the path.
    _Rule(("://",), re.compile(r"(?P<pre>://[^\s/?#@:]{0,256}+):[^\s/?#]{1,256}@"), r"\g<pre>:[REDACTED:password]@"),
    _Rule(
        ("bearer", "basic"),
        re.compile(rf"{_START}(?P<scheme>bearer|basic)[ \t]++(?P<cred>[A-Za-z0-9._~+/-]{{8,}}+=*+)", re.IGNORECASE),
        _auth_scheme,
    ),
    # Anthropic: sk-ant-api03-..., sk-ant-admin01-..., sk-ant-oat01-...
    _Rule(("sk-ant-",), re.compile(rf"{_START}sk-ant-[{_B64URL}]{{16,}}+"), _marker("anthropic_key")),
    # OpenAI: legacy sk-<48>, sk-proj-..., sk-svcacct-..., sk-admin-...; short "sk-1.2" survives.
    _Rule(("sk-",), re.compile(rf"{_START}sk-(?:proj-|svcacct-|admin-)?[{_B64URL}]{{32,}}+"), _marker("openai_key")),
    # Google: API keys (AIza + 35), OAuth client secrets and access tokens.
    _Rule(("aiza",), re.compile(rf"{_START}AIza[{_B64URL}]{{35}}(?![{_B64URL}])"), _marker("google_key")),
    _Rule(("gocspx-",), re.compile(rf"{_START}GOCSPX-[{_B64URL}]{{28,}}+"), _marker("google_client_secret")),
    _Rule(("ya29.",), re.compile(rf"{_START}ya29\.[{_B64URL}]{{20,}}+"), _marker("google_token")),
    # Azure: 84-character keys with the "JQQJ9" signature (Microsoft's common annotated key
    # format, used by new AI services / OpenAI keys), and Entra ID client secrets ("8Q~").
    # Legacy 32-hex keys, storage AccountKey=, SAS sig= are caught by their names.
    _Rule(
        ("jqqj9",),
        re.compile(
            r"(?<![A-Za-z0-9])[A-Za-z0-9]{52}JQQJ9[9DH][A-Za-z0-9][A-L][A-Za-z0-9]{16}[A-Za-z][A-Za-z0-9]{7}"
            r"(?:[A-Za-z0-9]{2}==)?(?![A-Za-z0-9])"
        ),
        _marker("azure_key"),
    ),
    _Rule(
        ("8q~",),
        re.compile(r"(?<![A-Za-z0-9_~.-])[A-Za-z0-9_~.-]{3}8Q~[A-Za-z0-9_~.-]{34}(?![A-Za-z0-9_~.-])"),
        _marker("azure_client_secret"),
    ),
    # Paddle Billing: API keys and notification-destination (webhook) secret keys.
    _Rule(("pdl_",), re.compile(rf"{_START}pdl_(?:live|sdbx)_apikey_[A-Za-z0-9_]{{20,}}+"), _marker("paddle_key")),
    _Rule(("pdl_ntf",), re.compile(rf"{_START}pdl_ntf[a-z]*_[A-Za-z0-9_+/=]{{10,}}+"), _marker("paddle_secret")),
    # Cloudflare: scannable keys/tokens (cfk_ global key, cfut_ user, cfat_ account) and Origin CA
    # keys; legacy 40-character tokens and 37-hex global keys only by name (X-Auth-Key, *_TOKEN).
    _Rule(
        ("cfk_", "cfut_", "cfat_"),
        re.compile(rf"{_START}(?:cfk|cfut|cfat)_[{_B64URL}]{{40,}}+"),
        _marker("cloudflare_token"),
    ),
    _Rule(
        ("v1.0-",),
        re.compile(r"(?<![A-Za-z0-9.-])v1\.0-[0-9a-f]{24}-[0-9a-f]{146}"),
        _marker("cloudflare_origin_ca_key"),
    ),
    # Webhook signing secrets (Stripe, Svix / Standard Webhooks), Stripe keys, GitHub, AWS.
    _Rule(("whsec_",), re.compile(rf"{_START}whsec_[A-Za-z0-9+/=_-]{{16,}}+"), _marker("webhook_secret")),
    _Rule(
        ("k_live_", "k_test_"),
        re.compile(rf"{_START}(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{{16,}}+"),
        _marker("stripe_key"),
    ),
    _Rule(
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        re.compile(rf"{_START}(?:gh[pousr]_[A-Za-z0-9]{{36,}}+|github_pat_[A-Za-z0-9_]{{22,}}+)"),
        _marker("github_token"),
    ),
    _Rule(
        ("akia", "asia", "abia", "acca"),
        re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Z0-9])"),
        _marker("aws_access_key"),
    ),
    # E-mail addresses, also URL-encoded (alice%40example.com). "a@b" in code, "user@host" and
    # retina file names ("logo@2x.png") are not addresses.
    _Rule(
        ("@", "%40"),
        re.compile(
            r"(?<![A-Za-z0-9._+-])[A-Za-z0-9._+-]{1,256}+(?:@|%40)(?:[A-Za-z0-9-]{1,63}+\.){1,8}"
            r"(?!(?:png|jpe?g|gif|svg|webp|ico|css|js)(?![A-Za-z]))[A-Za-z]{2,24}(?![A-Za-z0-9-])"
        ),
        _marker("email"),
    ),
)


def _name_regex(name: str) -> str:
    return r"[ _.-]?".join(re.escape(part) for part in name.split("_"))


_NAMES = "|".join(_name_regex(n) for n in sorted(SECRET_NAMES, key=len, reverse=True))

# `name=value`, `name: value`, `"name": "value"`, `('name', 'value')` with a secret name. Quoted
# values run to their closing quote (or the end of the line when it is missing or escaped
# differently: over-redacting beats leaking); an auth scheme before the value is kept.
_KEY_VALUE = re.compile(
    rf"(?<![A-Za-z0-9_.-])(?P<key>[A-Za-z0-9_.-]{{0,64}}?(?:{_NAMES})(?:[_-]?[0-9]{{1,4}})?)(?![A-Za-z0-9_.-])"
    r"(?P<sep>\\?[\"']?[ \t]{0,3}(?::=|=>|[:=](?!=))[ \t]{0,3}|\\?[\"'][ \t]{0,3},[ \t]{0,3}b?(?=\\?[\"']))"
    r"(?P<scheme>(?:bearer|basic|digest|token|sharedaccesssignature)[ \t]++)?"
    r"(?P<value>(?P<quote>\\?\"|')(?:[^\"'\\\n]|(?!(?P=quote))[\"']|(?!(?P=quote))\\.)*+(?P=quote)?|[^\s,;&\"'<>(){}\]]++)",
    re.IGNORECASE,
)


def _redact_value(match: re.Match[str]) -> str:
    quote = match["quote"] or ""
    inner = match["value"][len(quote) :]
    if inner.startswith("[REDACTED"):
        return match[0]
    return f"{match['key']}{match['sep']}{match['scheme'] or ''}{quote}{REDACTED}{quote}"


_KEY_VALUE_RULE = _Rule(
    ("pass", "pwd", "secret", "token", "jwt", "key", "auth", "cred", "cookie", "sess", "dsn", "sig", "connection"),
    _KEY_VALUE,
    _redact_value,
)


def _empty(value: Any) -> bool:
    # A missing or empty secret reveals nothing and tells a reader what went wrong.
    return value is None or (isinstance(value, str | bytes) and not value)


_ALL_RULES = (*_RULES, _KEY_VALUE_RULE)


def _any_of(words: set[str]) -> str:
    """A regex that matches where any of `words` starts: their trie as nested alternations.

    Each branch starts with a distinct literal, so at any position at most one path is followed,
    at most as deep as the longest word: linear in the text. Where a word ends, the path stops
    (a longer word through it could only match where the shorter one already does).
    """
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def branch(node: dict[str, Any]) -> str:
        if "" in node:
            return ""
        alternatives = [re.escape(ch) + branch(child) for ch, child in sorted(node.items())]
        return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"

    return branch(trie)


# Every rule's hints in one pattern, searched once over the lower-cased text: most strings of a
# log line (ids, hashes, timestamps, field names) hold none, and for them this one scan replaces
# a hint test per rule (which cost ~10 µs a string). Only text in which some hint occurs goes on
# to the rules, with exactly the per-rule hint tests as before, so each rule still runs on
# precisely the texts it ran on without this filter.
_ANY_HINT = re.compile(_any_of({hint for rule in _ALL_RULES for hint in rule.hints}))


# ---- personal data with a shape -----------------------------------------------------------------
#
# One pattern, alternatives tried left to right at each position (the NIR before cards: a bare NIR
# starting with 2 would otherwise be taken, and rejected, as a card); a candidate whose checksum or
# range rule fails is left as it was (a near-miss is not personal data of that kind). Written
# forms recognised, and nothing else:
#   card      13–19 digits of a known issuer range (Visa 4, Mastercard 51–55 and 2221–2720, Amex
#             34/37, Discover 6011/644–649/65, JCB 35, Diners 300–305/36/38, UnionPay 62), bare or
#             in groups of 4 (Amex 4-6-5) split by one space or dash; Luhn-checked.
#   iban      two capital letters, two check digits, 11–30 letters or digits (bare, or in groups
#             of 4 split by single spaces); mod 97-10 checked.
#   us_ssn    123-45-6789 (dashes only): area not 000, 666 or 9xx, group not 00, serial not 0000.
#   uk_nino   AB123456C or AB 12 34 56 C: the allocated prefix letters (not D F I Q U V; second
#             not O; not BG GB KN NK NT TN ZZ), suffix A–D.
#   fr_nir    1 84 12 76 451 089 46 (sex, year, month, department incl. 2A/2B, commune, order,
#             key), bare or spaced; the key (97 − number mod 97) is checked.
#   phone     international: "+", a country code, 8–15 digits in all (E.164) in any grouping by
#             space, dot, dash or parentheses; North American: (415) 555-0132, 415-555-0132,
#             415.555.0132, 415 555 0132 (area and exchange 2–9…); national numbers with a trunk
#             0: 06 12 34 56 78 / 0612345678 (FR), 020 7946 0958 / 07700 900123 (UK), i.e. 10–11
#             digits in those groupings. Bare digit strings without "+" or grouping are not masked
#             (they are ids, counts and timestamps far more often than phone numbers).
_NA = r"(?![A-Za-z0-9_])"  # no word character after
_PII = re.compile(
    # One left boundary for all (checked first, it rejects most positions at once: inside words,
    # ids and digit runs); then the kinds, each ending at a right boundary.
    r"(?<![A-Za-z0-9_+])(?=[0-9A-Z+(])(?:"
    rf"""
      (?P<fr_nir>[12](?P<ns>\ ?)\d{{2}}(?P=ns)(?:0[1-9]|1[0-2]|[2-9]\d)(?P=ns)(?:\d{{2}}|2[AB])
        (?P=ns)\d{{3}}(?P=ns)\d{{3}}(?P=ns)\d{{2}}{_NA})
    | (?P<card>(?:
        [2-6]\d{{12,18}}+
      | [2-6]\d{{3}}(?P<cs>[ -])\d{{4}}(?P=cs)\d{{4}}(?P=cs)\d{{1,7}}+
      | 3[47]\d{{2}}(?P<as>[ -])\d{{6}}(?P=as)\d{{5}}
      ){_NA})
    | (?P<iban>[A-Z]{{2}}\d{{2}}(?:[A-Z0-9]{{11,30}}+|(?:\ [A-Z0-9]{{4}}){{2,7}}+(?:\ [A-Z0-9]{{1,3}}+)?){_NA})
    | (?P<us_ssn>(?!000|666|9)\d{{3}}-(?!00)\d{{2}}-(?!0000)\d{{4}}{_NA})
    | (?P<uk_nino>(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]
        (?:\d{{6}}|\ \d{{2}}\ \d{{2}}\ \d{{2}}\ ?)[A-D]{_NA})
    | (?P<phone>(?:
        \+\d{{1,3}}+(?:[ .-]?\(?\d{{1,5}}+\)?){{1,7}}+
      | (?:\([2-9]\d{{2}}\)\ ?|[2-9]\d{{2}}(?P<us>[ .-]))[2-9]\d{{2}}(?(us)(?P=us)|[ .-])\d{{4}}
      | 0[1-9](?:(?P<fs>[ .-])\d{{2}}(?:(?P=fs)\d{{2}}){{3}}|\d{{8}})
      | 0\d{{2,4}}\ \d{{3,4}}\ ?\d{{3,4}}
      )(?![A-Za-z0-9_]|[.-]\d))
    )""",
    re.VERBOSE,
)


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_issuer(digits: str) -> bool:
    n = len(digits)
    two, four = int(digits[:2]), int(digits[:4])
    if digits[0] == "4":
        return n in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16
    if two in (34, 37):
        return n == 15
    if four == 6011 or two == 65 or 644 <= int(digits[:3]) <= 649:
        return 16 <= n <= 19
    if two == 35:
        return 16 <= n <= 19
    if 300 <= int(digits[:3]) <= 305 or two in (36, 38):
        return 14 <= n <= 19
    if two == 62:
        return 16 <= n <= 19
    return False


def _iban_ok(compact: str) -> bool:
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _nir_ok(compact: str) -> bool:
    body = compact[:13].replace("2A", "19").replace("2B", "18")
    return 97 - int(body) % 97 == int(compact[13:])


def _mask_pii(match: re.Match[str]) -> str:
    kind = match.lastgroup
    text = match[0]
    if kind == "card":
        digits = text.replace(" ", "").replace("-", "")
        ok = _card_issuer(digits) and _luhn(digits)
    elif kind == "iban":
        ok = _iban_ok(text.replace(" ", ""))
    elif kind == "fr_nir":
        ok = _nir_ok(text.replace(" ", ""))
    elif kind == "phone":
        digits = sum(ch.isdigit() for ch in text)
        ok = 8 <= digits <= 15 if text[0] == "+" else 10 <= digits <= 11
    else:
        ok = True  # us_ssn, uk_nino: the pattern holds every rule they have
    return _marker(kind) if ok and kind else text


# Quantifiers over digit runs are possessive: a run that is too long fails at once instead of
# being re-split (the international phone form could otherwise be split in exponentially many
# ways).
#
# The gate: every shape above contains a run of 7 or more characters of [0-9A-Z ().+-] that
# starts with a digit, "+" or "(". Text without one (words, lower-case hex ids and hashes, most
# UUIDs) skips the pattern; the gate starts with a character class, which the regex engine scans
# for in C, so it costs well under a microsecond on a typical field.
_PII_GATE = re.compile(r"[0-9+(][0-9A-Z ().+-]{6,}")


def scrub_pii(text: str) -> str:
    """Mask phone, card, IBAN and national-id numbers (checksums verified where they exist)."""
    if len(text) < 9 or _PII_GATE.search(text) is None:  # the shortest shape (a NINO) has 9 characters
        return text
    return _PII.sub(_mask_pii, text)


def scrub_text(text: str) -> str:
    """Replace secrets, e-mail addresses and shaped personal data in free text with markers."""
    # Hints are looked up in the original text: what a rule adds is a marker, which never needs
    # another rule, so one lower-casing serves them all.
    lowered = text.lower()
    if _ANY_HINT.search(lowered) is not None:
        for rule in _ALL_RULES:
            for hint in rule.hints:
                if hint in lowered:
                    text = rule.pattern.sub(rule.replacement, text)
                    break
    return scrub_pii(text)


# Field names that some kind of line carries every time (structlog's own keys, the audit line's
# fields): what `scrub_text` and `is_secret_key` return for them is computed once, by those same
# functions, when they are registered, and looked up instead of recomputed for every line. Only
# registered names are kept; nothing seen at run time is remembered, so this holds no log data.
_KNOWN_NAMES: dict[str, tuple[str, bool]] = {}


def register_names(names: Iterable[str]) -> None:
    """Precompute the scrubbed form and secret-ness of field names that recur on every line."""
    for name in names:
        _KNOWN_NAMES[name] = (scrub_text(name), is_secret_key(name))


register_names(("event", "level", "logger", "timestamp", "exception", "correlation_id", "trace_id", "span_id",
                "tenant_id", "workspace_id", "user_id", "request_id", "method", "path", "status", "duration_ms"))


def _scrub_dict(value: dict[Any, Any], depth: int) -> dict[Any, Any]:
    scrubbed = {}
    known = _KNOWN_NAMES
    for k, v in value.items():
        if type(k) is str and k in known:
            key, secret = known[k]
        else:
            key, secret = (scrub_text(k) if isinstance(k, str) else k), isinstance(k, str | bytes) and is_secret_key(k)
        if secret and not _empty(v):
            v = REDACTED
        else:
            v = scrub_text(v) if type(v) is str else scrub(v, depth + 1)
        scrubbed[key] = v
    return scrubbed


def scrub(value: Any, _depth: int = 0) -> Any:
    """Scrub a value recursively: secret-named entries lose their value, all text is scrubbed."""
    if type(value) is str:  # the common case first; subclasses take the general path below
        return scrub_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, bytes | bytearray):
        return scrub_text(bytes(value).decode("utf-8", "replace"))
    if _depth > _MAX_DEPTH:  # cycles or absurd nesting: fall back to the (scrubbed) repr
        return scrub_text(repr(value))
    if isinstance(value, dict):
        return _scrub_dict(value, _depth)
    if isinstance(value, list | tuple):
        # ("authorization", "Bearer ...") pairs: ASGI headers, query parameter lists.
        if len(value) == 2 and isinstance(value[0], str | bytes) and is_secret_key(value[0]) and not _empty(value[1]):
            items = [scrub(value[0], _depth + 1), REDACTED]
        else:
            items = [scrub(v, _depth + 1) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, set | frozenset):
        return [scrub(v, _depth + 1) for v in value]
    # Anything else would be rendered with str()/repr() later, unscrubbed: render it now.
    return scrub_text(str(value))
