"""Logging: structlog and stdlib records share one processor chain that ends in the scrubber."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.typing import EventDict, Processor

from app.observability.scrub import scrub

# Loggers that servers configure with their own handlers and propagate=False; they are pointed
# back at the root handler so their lines are scrubbed and rendered like every other line.
_SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn", "gunicorn.error", "gunicorn.access")

# Processors every record passes before formatting, whether it came from structlog or from a
# plain `logging` logger (a library, uvicorn): request context, level, logger name, UTC time.
_PRE_CHAIN: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler this module owns (so a second configure replaces it, not doubles it)."""

    # stderr, not stdout: CLI commands print results (a dev token, JSON) on stdout. Looked up at
    # each write, so a redirected sys.stderr (test capture, a supervisor) is honoured.
    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def _scrub_event(_: Any, __: str, event_dict: EventDict) -> EventDict:
    # Runs after exc_info became text and %-args were interpolated: nothing is rendered later
    # that the scrubber has not seen.
    return scrub(event_dict)  # type: ignore[no-any-return]


def configure_logging(*, json: bool, level: str) -> None:
    """Route structlog and stdlib logging through one scrubbing chain to stderr (idempotent)."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_PRE_CHAIN,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Safe to cache: this chain never changes, only the handler's formatter below does.
        cache_logger_on_first_use=True,
    )
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json
        # The exception is already text (and scrubbed): no renderer that re-reads the frames.
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_PRE_CHAIN, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _scrub_event,
            renderer,
        ],
    )
    handler = _Handler()
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())

    for name in _SERVER_LOGGERS:
        server_logger = logging.getLogger(name)
        server_logger.handlers.clear()
        server_logger.propagate = True


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A structlog logger whose lines take the shared chain."""
    return structlog.stdlib.get_logger(name)  # type: ignore[no-any-return]


def bind_request_context(**values: Any) -> None:
    """Bind fields (correlation_id, trace_id, tenant_id...) to every line of this request."""
    structlog.contextvars.bind_contextvars(**values)


def clear_request_context() -> None:
    """Forget the fields bound for the current request."""
    structlog.contextvars.clear_contextvars()
