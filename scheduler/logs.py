"""Operator logs: one line per meaningful event, as text or JSON lines."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]  # seconds, monotonic; tests pass a fake one

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger for the process; grpclib's per-request chatter stays quiet."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Neither format shows the source line, thread or process: not looking them up saves a
    # third of each record's cost (the logging HOWTO's "Optimization"; a placement logs one).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.getLogger("grpclib").setLevel(logging.WARNING)
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, Repeats) for f in asyncio_log.filters):
        asyncio_log.addFilter(Repeats())


REPEAT_EVERY = 60.0  # s between the lines of a problem that goes on (with its count)


class Repeating:
    """A problem retried every fraction of a second (etcd unreachable), logged as an operator
    needs it: its first occurrence; while it goes on, one line per `every` seconds saying how
    many attempts failed since; and, if it had repeated, one line when it is over. Not one
    line per attempt: etcd down for an hour would otherwise write tens of thousands."""

    def __init__(
        self,
        logger: logging.Logger,
        level: int = logging.WARNING,
        every: float = REPEAT_EVERY,
        clock: Clock = time.monotonic,
    ) -> None:
        self._logger = logger
        self._level = level
        self._every = every
        self._clock = clock
        self._since: float | None = None  # when the problem began; None while there is none
        self._logged = 0.0  # when it was last logged
        self._unlogged = 0  # occurrences since
        self._count = 0  # occurrences since it began

    def occurred(self, message: str, *args: object) -> None:
        now = self._clock()
        self._count += 1
        if self._since is None:
            self._since = self._logged = now
            self._logger.log(self._level, message, *args)
            return
        self._unlogged += 1
        if now - self._logged >= self._every:
            self._logger.log(
                self._level,
                message + " (%d more times in %.0f s)",
                *args,
                self._unlogged,
                now - self._logged,
            )
            self._logged, self._unlogged = now, 0

    def over(self, message: str, *args: object) -> None:
        """The problem is over: say so (INFO) if it had repeated; nothing otherwise."""
        if self._since is not None and self._count > 1:
            self._logger.info(
                message + " (after %d failed attempts in %.0f s)",
                *args,
                self._count,
                self._clock() - self._since,
            )
        self._since, self._unlogged, self._count = None, 0, 0


@dataclass(slots=True)
class _Passed:
    """A key of a _Throttle: when it last passed, and how many were held back since."""

    at: float
    held: int = 0


class _Throttle:
    """Per key, at most one pass per `interval` seconds, counting those held back meanwhile;
    at most `keys` keys, the least recently passed forgotten."""

    def __init__(self, interval: float, keys: int, clock: Clock) -> None:
        self._interval = interval
        self._keys = keys
        self._clock = clock
        self._state: dict[object, _Passed] = {}

    def admit(self, key: object) -> int | None:
        """None if `key` passed within the interval (now held back); else how many were
        held back since it last passed."""
        now = self._clock()
        state = self._state.get(key)
        if state is not None and now - state.at < self._interval:
            state.held += 1
            return None
        self._state.pop(key, None)
        self._state[key] = _Passed(now)
        if len(self._state) > self._keys:
            del self._state[next(iter(self._state))]
        return state.held if state is not None else 0


SUFFIX = " (and %d more like it since the previous such line)"


class RateLimited:
    """One kind of log line, at most one per `interval` seconds per key (a peer, a node).

    A flood of the same event (a peer refused a thousand times a second) must not flood the
    log: the first line is written, the next ones within the interval only counted, and the
    next line written says how many were left out. Keys are bounded: the least recently
    logged are forgotten beyond `keys`.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        keys: int = 1024,
        clock: Clock = time.monotonic,
    ) -> None:
        self._logger = logger
        self._throttle = _Throttle(interval, keys, clock)

    def log(self, level: int, key: object, message: str, *args: object) -> bool:
        """Log `message % args` unless a line with `key` was logged within the interval;
        True if written."""
        held = self._throttle.admit(key)
        if held is None:
            return False
        if held:
            message += SUFFIX
            args = (*args, held)
        self._logger.log(level, message, *args)
        return True

    def warning(self, key: object, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, message, *args)


class Repeats(logging.Filter):
    """Lets through one record per message text every `interval` seconds, saying how many it
    held back. For asyncio's logger, whose lines a peer can provoke at will: a client that
    dropped a connection with 100 calls being answered got one "socket.send() raised
    exception." line per answer."""

    def __init__(
        self, interval: float = 10.0, keys: int = 256, clock: Clock = time.monotonic
    ) -> None:
        super().__init__()
        self._throttle = _Throttle(interval, keys, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        held = self._throttle.admit(record.msg)
        if held:
            record.msg = str(record.msg) + SUFFIX.replace("%d", str(held))
        return held is not None
