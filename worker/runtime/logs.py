"""Worker logging: secrets masked everywhere, event context on every line, optional JSON lines.

Every line about an event carries its task id, event id and phone id (``extra=`` on the call,
the task id from Celery). ``RECALL_LOG_FORMAT=json`` writes one JSON object per line for log
shippers. Passwords in URLs (``redis://:secret@host``, ``?password=secret``) are masked in every
message.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

import orjson

from config.settings import mask_query
from worker.names import DISPATCH_TASK

__all__ = ["JsonFormatter", "MaskSecrets", "QuietTicks", "TextFormatter", "install", "mask_secrets"]

# The password runs to the last "@" before the host (a raw "@" in a password is accepted by the
# URL parsers the drivers use).
_URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)\S*?(?=@[^@\s]*(?:[/?#\s\]\"',]|$))"
)
_CONTEXT = ("task_id", "event_id", "phone_id", "recall_id")


def mask_secrets(text: str) -> str:
    """``text`` with the password of every URL in it (``:secret@``, ``?password=``) as ``***``."""
    return mask_query(_URL_PASSWORD.sub(r"\g<head>***", text))


def _task_id() -> str | None:
    from celery import current_task

    request = getattr(current_task, "request", None) if current_task else None
    return getattr(request, "id", None)


class MaskSecrets(logging.Filter):
    """Masks URL passwords in the formatted message and adds the event context attributes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if getattr(record, "task_id", None) is None:
            record.task_id = _task_id()
        for name in _CONTEXT:
            if not hasattr(record, name):
                setattr(record, name, None)
        return True


class QuietTicks(logging.Filter):
    """Drops Celery's per-task INFO lines for the dispatcher's tick, which runs every second.

    Sixty lines a minute of "received"/"succeeded" would drown the log; the dispatcher logs a
    line itself whenever it hands recalls over, and errors still show.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno <= logging.INFO
            and record.name in ("celery.app.trace", "celery.worker.strategy", "celery.beat")
            and DISPATCH_TASK in record.getMessage()
        )


class TextFormatter(logging.Formatter):
    """The usual text line, with `[task=… event=… phone=…]` appended when known."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{name.removesuffix('_id')}={value}"
            for name in _CONTEXT
            if (value := getattr(record, name, None))
        )
        return mask_secrets(f"{line} [{context}]" if context else line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, process, context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName,
        }
        for name in _CONTEXT:
            value = getattr(record, name, None)
            if value:
                data[name] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return mask_secrets(orjson.dumps(data).decode())


def install(logger: logging.Logger, log_format: str) -> None:
    """Mask secrets and add context on every handler of ``logger`` (Celery's, once set up)."""
    for handler in logger.handlers:
        if not any(isinstance(f, MaskSecrets) for f in handler.filters):
            handler.addFilter(QuietTicks())
            handler.addFilter(MaskSecrets())
        if log_format == "json":
            handler.setFormatter(JsonFormatter())
        elif not isinstance(handler.formatter, TextFormatter):
            current = handler.formatter
            handler.setFormatter(
                TextFormatter(
                    current._fmt if current else None, current.datefmt if current else None
                )
            )
