"""The sd_notify protocol, spoken directly: READY, STATUS, WATCHDOG, STOPPING.

Silent when `NOTIFY_SOCKET` is unset (not under systemd). The watchdog pings at half the
interval systemd gives in `WATCHDOG_USEC`, from a trio task: if trio stalls, pings stop and
systemd restarts the service, which is the point.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping

import trio

log = logging.getLogger(__name__)

STATUS_INTERVAL = 10.0  # s between STATUS= updates (node/instance counts)


class Notifier:
    """Sends sd_notify datagrams to `$NOTIFY_SOCKET`; every method is a no-op without it."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self._address = address or None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        watchdog_for_us = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 1e6 / 2 if watchdog_for_us and int(usec) else None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> None:
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as err:
            log.warning("sd_notify to %r failed: %s", self._address, err)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=shutting down")

    async def run(self, status: Callable[[], str]) -> None:
        """Ping the watchdog and refresh STATUS= until cancelled."""
        if self._address is None:
            await trio.sleep_forever()
        interval = min(self.watchdog_interval or STATUS_INTERVAL, STATUS_INTERVAL)
        while True:
            fields = [f"STATUS={status()}"]
            if self.watchdog_interval is not None:
                fields.insert(0, "WATCHDOG=1")
            self.notify(*fields)
            await trio.sleep(interval)
