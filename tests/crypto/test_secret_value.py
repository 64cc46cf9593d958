"""A SecretValue never shows its value: repr, str, format, logging, exceptions, tracebacks, pickles."""

from __future__ import annotations

import copy
import json
import logging
import pickle
import sys
import traceback

import pytest

from app.crypto.secrets import MissingSecret, SecretValue, UnsafeSecretFile

VALUE = "postgresql://app:hunter2-Zq9@db.internal/palisade"


def test_reveal_returns_the_value() -> None:
    assert SecretValue(VALUE).reveal() == VALUE


@pytest.mark.parametrize(
    "render",
    [
        repr,
        str,
        ascii,
        lambda s: f"{s}",
        lambda s: f"{s!r}",
        lambda s: f"{s!s}",
        lambda s: f"{s:>80}",
        lambda s: "%s %r" % (s, s),  # noqa: UP031
        lambda s: "{} {!r} {:^30}".format(s, s, s),
        lambda s: str([s, {"k": s}, (s,)]),
        lambda s: format(s, "s"),
    ],
)
def test_no_rendering_shows_the_value(render) -> None:
    text = render(SecretValue(VALUE, name="database-url"))
    assert VALUE not in text and "hunter2" not in text
    assert "*****" in text


def test_repr_names_the_secret_but_not_the_value() -> None:
    assert repr(SecretValue(VALUE, name="database-url")) == "SecretValue(name='database-url', value='**********')"
    assert repr(SecretValue(VALUE)) == "SecretValue('**********')"


def test_logging_output_never_contains_the_value(caplog: pytest.LogCaptureFixture) -> None:
    secret = SecretValue(VALUE, name="database-url")
    log = logging.getLogger("palisade.test.crypto")
    with caplog.at_level(logging.DEBUG, logger="palisade.test.crypto"):
        log.info("connecting with %s", secret)
        log.warning("settings: %r", {"database_url": secret})
        log.error(f"f-string {secret}")
        try:
            raise RuntimeError(f"could not connect using {secret}")
        except RuntimeError:
            log.exception("failed")
    assert caplog.records
    assert VALUE not in caplog.text and "hunter2" not in caplog.text
    for record in caplog.records:
        assert "hunter2" not in record.getMessage()


def test_exceptions_and_tracebacks_with_locals_never_contain_the_value() -> None:
    def use(secret: SecretValue) -> None:
        local_copy = secret  # noqa: F841  (a local that capture_locals renders)
        raise ValueError(f"bad credential {secret!r}")

    try:
        use(SecretValue(VALUE))
    except ValueError:
        info = sys.exc_info()
    rendered = "".join(traceback.TracebackException(*info, capture_locals=True).format())
    assert "local_copy" in rendered  # the locals were rendered ...
    assert "hunter2" not in rendered  # ... masked

    assert "hunter2" not in str(MissingSecret("database-url"))
    assert "hunter2" not in str(UnsafeSecretFile("/etc/palisade/secrets/database-url", "mode 0644"))


def test_pickling_is_refused_and_copies_are_the_same_object() -> None:
    secret = SecretValue(VALUE)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="cannot be pickled") as excinfo:
            pickle.dumps(secret, protocol=protocol)
        assert "hunter2" not in str(excinfo.value)
    with pytest.raises(TypeError):
        pickle.dumps({"nested": [secret]})
    assert copy.copy(secret) is secret
    assert copy.deepcopy({"s": secret})["s"] is secret


def test_json_refuses_it_without_showing_it() -> None:
    with pytest.raises(TypeError) as excinfo:
        json.dumps({"database_url": SecretValue(VALUE)})
    assert "hunter2" not in str(excinfo.value)


def test_immutable_unhashable_and_compared_in_constant_time() -> None:
    secret = SecretValue(VALUE)
    with pytest.raises(AttributeError):
        secret._value = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del secret._value  # type: ignore[misc]
    with pytest.raises(TypeError):
        vars(secret)  # no __dict__ to peek into
    with pytest.raises(TypeError):
        hash(secret)
    assert secret == SecretValue(VALUE)
    assert secret != SecretValue(VALUE + "x")
    assert secret != VALUE  # never equal to the plain string: comparisons stay explicit
    assert bool(secret) and not SecretValue("")
    with pytest.raises(TypeError):
        SecretValue(b"bytes")  # type: ignore[arg-type]
