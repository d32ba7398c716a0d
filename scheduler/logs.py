"""Operator logs: one line per meaningful event, as text or JSON lines."""
from __future__ import annotations

import json
import logging
import sys
import time

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
    logging.getLogger("grpclib").setLevel(logging.WARNING)


REPEAT_EVERY = 60.0  # s between the lines of a problem that goes on (with its count)


class Repeating:
    """A problem retried every fraction of a second (etcd unreachable), logged as an operator
    needs it: its first occurrence; while it goes on, one line per `every` seconds saying how
    many attempts failed since; and, if it had repeated, one line when it is over. Not one
    line per attempt: etcd down for an hour would otherwise write tens of thousands."""

    def __init__(self, logger: logging.Logger, level: int = logging.WARNING,
                 every: float = REPEAT_EVERY, clock=time.monotonic) -> None:
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
            self._logger.log(self._level, message + " (%d more times in %.0f s)", *args,
                             self._unlogged, now - self._logged)
            self._logged, self._unlogged = now, 0

    def over(self, message: str, *args: object) -> None:
        """The problem is over: say so (INFO) if it had repeated; nothing otherwise."""
        if self._since is not None and self._count > 1:
            self._logger.info(message + " (after %d failed attempts in %.0f s)", *args,
                              self._count, self._clock() - self._since)
        self._since, self._unlogged, self._count = None, 0, 0
