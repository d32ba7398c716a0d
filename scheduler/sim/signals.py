"""Stopping a plain-asyncio tool (simulated Agents, simulated Controller) on SIGINT/SIGTERM.

Its own module so that the simulator and the simulated Controller share it without importing
each other."""

from __future__ import annotations

import asyncio
import os
import signal


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT/SIGTERM; a second signal exits at once (a clean stop is stuck)."""
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            os._exit(130)
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    return stop
