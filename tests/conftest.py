"""Shared fixtures: a scheduler served on 127.0.0.1:0 inside the test's trio run.

Policy (after trio-websocket's tests): localhost only, port 0, a fail_after guard on every
I/O test, MockClock where only time matters (no sockets).
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import asynccontextmanager

import pytest
import trio

from scheduler.app import serve
from scheduler.config import Config

IO_GUARD = 20  # s: no socket test may hang longer than this


def make_config(**sections) -> Config:
    sections.setdefault("server", {})
    sections["server"] = {
        "listen": "127.0.0.1:0",
        "shutdown_grace": 2.0,
        "data_dir": tempfile.mkdtemp(prefix="orka-test-"),
        **sections["server"],
    }
    sections["observability"] = {"http_listen": "127.0.0.1:0", **sections.get("observability", {})}
    return Config().replace(**sections)


@asynccontextmanager
async def running_scheduler(config: Config | None = None, **tls):
    """Serve a scheduler (plaintext unless ssl_context/authorize given); yield it; shut down."""
    config = config or make_config()
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        scheduler = await nursery.start(
            lambda task_status: serve(
                config,
                ssl_context=tls.get("ssl_context"),
                authorize=tls.get("authorize"),
                shutdown=shutdown,
                task_status=task_status,
            )
        )
        scheduler.shutdown = shutdown
        try:
            with trio.fail_after(IO_GUARD):
                yield scheduler
        finally:
            shutdown.set()


@pytest.fixture
def restore_logging():
    """`logs.setup` reconfigures the process's logging: put back what pytest had."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    grpclib_level = logging.getLogger("grpclib").level
    asyncio_filters = logging.getLogger("asyncio").filters[:]
    flags = (logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("grpclib").setLevel(grpclib_level)
    logging.getLogger("asyncio").filters[:] = asyncio_filters
    (logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing) = flags
