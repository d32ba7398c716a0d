"""`orka-scheduler nodes` and `orka-scheduler watch` (scheduler/admin.py), as an operator runs them.

The commands run as real subprocesses (`python -m scheduler ...`) against a scheduler served
on 127.0.0.1:0 in the test's own trio run; the formatters are also tested on hand-built
protobuf messages. Every subprocess test is guarded by the scheduler's fail_after.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio_asyncio

from scheduler import admin
from scheduler._proto import controller_pb2 as pb
from scheduler.pki import init_pki
from scheduler.tls_setup import server_tls
from tests.conftest import IO_GUARD, make_config, running_scheduler
from tests.fakes import FakeAgent, aio, drop_stream, make_channel, open_channel, wait_until
from tests.standby import FakeStandby

REPO = Path(__file__).resolve().parent.parent
GIB = 1 << 30
COLUMNS = ("NODE", "STATE", "ADDRESS", "CPU", "MEMORY FREE/TOTAL", "INSTANCES", "LAST SEEN")


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "scheduler", *args]


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


async def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    """Run `orka-scheduler ARGS` to its end (with `env` added to the environment); stdout and
    stderr captured as text."""
    result = await trio.run_process(
        command(*args),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=environment(**env),
        cwd=REPO,
    )
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    return result


def table(text: str) -> list[dict[str, str]]:
    """`format_nodes` output as one {column: cell} per row, cut at the header's column starts."""
    header, *rows = text.rstrip("\n").split("\n")
    starts = [header.index(name) for name in COLUMNS]
    assert starts == sorted(starts), header
    bounds = list(zip(starts, starts[1:] + [None], strict=True))
    return [
        {name: row[start:end].strip() for name, (start, end) in zip(COLUMNS, bounds, strict=True)}
        for row in rows
    ]


class LineReader:
    """Reads a subprocess's stdout line by line as it is written."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""
        self.lines: list[str] = []

    async def line(self) -> str:
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some(65536)
            assert chunk, f"stdout ended; lines so far: {self.lines}"
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\n", 1)
        self.lines.append(raw.decode())
        return self.lines[-1]

    async def line_with(self, word: str) -> str:
        while word not in (line := await self.line()).split():
            pass
        return line


async def join_with_status(channel, scheduler, node_id: str, port: int, **metrics):
    agent = FakeAgent(channel, node_id, port)
    await agent.join()
    stream = await agent.report(**metrics)
    await wait_until(lambda: scheduler.cluster.nodes[node_id].metrics is not None)
    return stream


def unused_port() -> socket.socket:
    """A bound TCP socket that does not listen: connecting to its port is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


# -- nodes ---------------------------------------------------------------------------------------


async def test_nodes_prints_a_table_with_one_row_per_node():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        streams = [
            await join_with_status(
                channel,
                scheduler,
                "node-a",
                7001,
                mem_total=8 * GIB,
                mem_free=2 * GIB,
                load=25.0,
                cores=4,
            ),
            await join_with_status(
                channel,
                scheduler,
                "node-b",
                7002,
                mem_total=16 * GIB,
                mem_free=12 * GIB,
                load=5.0,
                cores=8,
            ),
        ]
        result = await run_cli("nodes", "--insecure", "--address", f"127.0.0.1:{scheduler.port}")
        for stream in streams:
            await drop_stream(stream)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    header = result.stdout.splitlines()[0]
    assert header.split() == " ".join(COLUMNS).split(), header
    rows = table(result.stdout)
    assert [(r["NODE"], r["STATE"], r["ADDRESS"]) for r in rows] == [
        ("node-a", "READY", "127.0.0.1:7001"),
        ("node-b", "READY", "127.0.0.1:7002"),
    ]
    assert [r["MEMORY FREE/TOTAL"] for r in rows] == ["2.0/8.0 GiB", "12.0/16.0 GiB"]
    assert [r["CPU"] for r in rows] == ["25% of 4", "5% of 8"]
    assert all(r["INSTANCES"] == "0" for r in rows)
    assert all(r["LAST SEEN"] in ("0s ago", "1s ago", "2s ago") for r in rows), rows


async def test_nodes_with_nothing_listening_exits_1_with_one_line():
    with unused_port() as sock:
        port = sock.getsockname()[1]
        with trio.fail_after(IO_GUARD):
            result = await run_cli("nodes", "--insecure", "--address", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"orka-scheduler: cannot reach the scheduler at 127.0.0.1:{port}")


async def test_nodes_from_a_server_that_never_answers_says_so_within_its_timeout():
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        with trio.fail_after(IO_GUARD):
            result = await run_cli("nodes", "--insecure", "--address", address, "--timeout", "0.5")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr == f"orka-scheduler: no answer from {address} within 0.5 s (--timeout)\n"


async def test_nodes_with_only_ca_asks_for_the_certificate_and_key(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not used")
    with trio.fail_after(IO_GUARD):
        result = await run_cli("nodes", "--ca", str(ca), "--address", "127.0.0.1:1")
        half = await run_cli("nodes", "--cert", str(ca), "--address", "127.0.0.1:1")
    assert result.returncode != 0 and half.returncode != 0
    assert "Traceback" not in result.stderr + half.stderr, result.stderr + half.stderr
    assert result.stderr.strip() == (
        "orka-scheduler: --ca needs --cert and --key too (a Controller certificate from that CA)"
    )
    assert half.stderr.strip() == "orka-scheduler: give --cert and --key together"


async def test_nodes_with_a_malformed_address_exits_with_one_line():
    with trio.fail_after(IO_GUARD):
        result = await run_cli("nodes", "--insecure", "--address", "no-port-here")
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, (
        "a malformed --address ends in a traceback: the ConfigError of parse_host_port "
        "(admin.py, reading --address) must end as one line, like the GRPCError, OSError, "
        "TimeoutError and SSLError that admin's run() catches (or parse the address in "
        f"argparse). stderr was:\n{result.stderr}"
    )
    assert result.returncode != 0
    assert "--address" in result.stderr


# -- watch ---------------------------------------------------------------------------------------


async def test_watch_prints_a_snapshot_then_joins_as_they_happen():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        await join_with_status(channel, scheduler, "node-a", 7001)
        process = await trio.lowlevel.open_process(
            command("watch", "--insecure", "--address", f"127.0.0.1:{scheduler.port}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment(),
            cwd=REPO,
        )
        try:
            out = LineReader(process.stdout)
            snapshot = await out.line()
            assert snapshot.split()[1:4] == ["SNAPSHOT", "1", "nodes,"], snapshot
            assert f"(epoch {scheduler.events.epoch})" in snapshot

            await FakeAgent(channel, "node-b", 7002).join()
            joined = await out.line_with("JOINED")
            assert joined.split()[1:5] == ["JOINED", "node", "node-b", "127.0.0.1:7002"], joined
            assert int(joined.split()[0]) > int(snapshot.split()[0])

            process.send_signal(signal.SIGINT)  # Ctrl-C: the operator is done
            assert await process.wait() == 0
            assert b"Traceback" not in await process.stderr.receive_some(65536)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_watch_exits_1_with_one_line_when_the_scheduler_stops():
    async with running_scheduler() as scheduler:
        process = await trio.lowlevel.open_process(
            command("watch", "--insecure", "--address", f"127.0.0.1:{scheduler.port}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment(),
            cwd=REPO,
        )
        try:
            await LineReader(process.stdout).line_with("SNAPSHOT")
            scheduler.shutdown.set()
            assert await process.wait() == 1
            stderr = b""
            while chunk := await process.stderr.receive_some(65536):
                stderr += chunk
            lines = stderr.decode().splitlines()
            assert len(lines) == 1 and lines[0].startswith("orka-scheduler: "), stderr.decode()
            assert "UNAVAILABLE" in lines[0], lines
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


# -- TLS, --config and what the errors say -----------------------------------------------------


@asynccontextmanager
async def tls_scheduler(data_dir: Path):
    """A scheduler with mutual TLS and its development PKI in `data_dir`/pki, as `serve` makes."""
    config = make_config(server={"data_dir": str(data_dir)})
    ssl_context, authorize, _ = server_tls(config)
    async with running_scheduler(config, ssl_context=ssl_context, authorize=authorize) as scheduler:
        yield scheduler


def config_file(tmp_path: Path, scheduler, tls: str = "") -> Path:
    """The running scheduler's configuration as its operator would have written it."""
    path = tmp_path / "scheduler.toml"
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:{scheduler.port}"\n'
        f'data_dir = "{scheduler.config.server.data_dir}"\n{tls}'
    )
    return path


def one_line(result: subprocess.CompletedProcess) -> str:
    """The single line of a failed command's stderr (exit 1, nothing on stdout, no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1 and result.stdout == "", (result.returncode, result.stdout)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


async def test_insecure_against_a_tls_scheduler_says_drop_insecure(tmp_path):
    async with tls_scheduler(tmp_path / "data") as scheduler:
        address = f"127.0.0.1:{scheduler.port}"
        for name in ("nodes", "watch"):
            result = await run_cli(name, "--insecure", "--address", address)
            assert one_line(result) == (
                f"orka-scheduler: the scheduler at {address} speaks TLS: drop --insecure"
            )


async def test_tls_against_a_plaintext_scheduler_says_add_insecure(tmp_path):
    async with running_scheduler() as scheduler:
        init_pki(scheduler.config.server.data_dir / "pki")  # credentials for the client
        address = f"127.0.0.1:{scheduler.port}"
        result = await run_cli("nodes", "--config", str(config_file(tmp_path, scheduler)))
    assert one_line(result) == (
        f"orka-scheduler: {address} answered in plaintext, not TLS: the "
        "scheduler runs with --insecure; add --insecure"
    )


async def test_config_gives_the_address_and_pki_of_a_scheduler_with_another_data_dir(tmp_path):
    """A scheduler run with --config: the admin commands find it and its PKI with the same
    --config, while the default data_dir holds another PKI (another scheduler's)."""
    default_pki = tmp_path / "default-state" / "pki"
    init_pki(default_pki)
    async with tls_scheduler(tmp_path / "data") as scheduler:
        address = f"127.0.0.1:{scheduler.port}"
        config = config_file(tmp_path, scheduler)
        listed = await run_cli(
            "nodes", "--config", str(config), STATE_DIRECTORY=str(tmp_path / "default-state")
        )
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.split() == " ".join(COLUMNS).split()  # reached, no nodes yet

        wrong = await run_cli(
            "nodes", "--address", address, STATE_DIRECTORY=str(tmp_path / "default-state")
        )
    line = one_line(wrong)
    assert line.startswith(
        f"orka-scheduler: the scheduler at {address} answered, but its "
        f"certificate is not signed by the CA in {default_pki / 'ca.pem'} ("
    ), line
    assert "cannot reach" not in line and "--config" in line, line


async def test_config_with_tls_files_takes_its_ca_and_asks_for_a_controller_certificate(tmp_path):
    async with tls_scheduler(tmp_path / "data") as scheduler:
        pki = tmp_path / "data" / "pki"
        config = config_file(
            tmp_path,
            scheduler,
            tls=(
                f'[tls]\nca = "{pki / "ca.pem"}"\ncert = "{pki / "scheduler.pem"}"\n'
                f'key = "{pki / "scheduler.key"}"\n'
            ),
        )
        refused = await run_cli("nodes", "--config", str(config))
        controller = pki / "controllers"
        listed = await run_cli(
            "nodes",
            "--config",
            str(config),
            "--cert",
            str(controller / "controller.pem"),
            "--key",
            str(controller / "controller.key"),
        )
    assert one_line(refused) == (
        f"orka-scheduler: {config} names the scheduler's own certificate ([tls]), which may not "
        "call in: give --cert and --key of a Controller certificate from the CA "
        f"{pki / 'ca.pem'}"
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == " ".join(COLUMNS).split()


async def test_a_certificate_the_scheduler_does_not_trust_is_named(tmp_path):
    stranger = init_pki(tmp_path / "stranger").controller("controller")
    async with tls_scheduler(tmp_path / "data") as scheduler:
        address = f"127.0.0.1:{scheduler.port}"
        result = await run_cli(
            "nodes",
            "--address",
            address,
            "--ca",
            str(tmp_path / "data" / "pki" / "ca.pem"),
            "--cert",
            str(stranger.cert),
            "--key",
            str(stranger.key),
        )
    assert one_line(result) == (
        f"orka-scheduler: the scheduler at {address} closed the connection after the TLS "
        f"handshake: it does not accept the certificate {stranger.cert} (from another CA?)"
    )


async def test_unusable_client_files_are_named_before_connecting(tmp_path):
    pki = init_pki(tmp_path / "pki")
    controller = pki.controller("controller")
    with trio.fail_after(IO_GUARD):
        missing = await run_cli(
            "nodes",
            "--address",
            "127.0.0.1:1",
            "--ca",
            str(pki.ca),
            "--cert",
            str(tmp_path / "absent.pem"),
            "--key",
            str(controller.key),
        )
        mismatched = await run_cli(
            "nodes",
            "--address",
            "127.0.0.1:1",
            "--ca",
            str(pki.ca),
            "--cert",
            str(controller.cert),
            "--key",
            str(pki.ca_key),
        )
    assert one_line(missing) == f"orka-scheduler: --cert: {tmp_path / 'absent.pem'}: no such file"
    assert one_line(mismatched) == (
        f"orka-scheduler: --key: {pki.ca_key} is not the private key of --cert ({controller.cert})"
    )


async def test_a_config_listening_on_port_0_needs_an_address(tmp_path):
    config = tmp_path / "any-port.toml"
    config.write_text('[server]\nlisten = "127.0.0.1:0"\n')
    with trio.fail_after(IO_GUARD):
        result = await run_cli("nodes", "--config", str(config))
    assert one_line(result) == (
        f"orka-scheduler: {config}: server.listen has port 0 (a new port "
        "at every start): give --address HOST:PORT"
    )


async def test_watch_ends_quietly_when_its_reader_stops_reading():
    """`orka-scheduler watch | head -1`: head exits, the next event finds the pipe closed."""
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        process = await trio.lowlevel.open_process(
            command("watch", "--insecure", "--address", f"127.0.0.1:{scheduler.port}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment(),
            cwd=REPO,
        )
        try:
            await LineReader(process.stdout).line_with("SNAPSHOT")
            await process.stdout.aclose()  # the reader is gone
            await FakeAgent(channel, "node-a", 7001).join()  # an event to write
            assert await process.wait() == 0
            stderr = b""
            while chunk := await process.stderr.receive_some(65536):
                stderr += chunk
            assert stderr == b"", stderr.decode()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


# -- several schedulers: following the leader ----------------------------------------------------
#
# Fake standbys (real grpclib servers answering UNAVAILABLE with `orka-leader`) in front of a real
# scheduler; a restart of a SQLite scheduler on the same data directory, on another port, stands
# in for a failover (the epoch continues, as SPEC §4.1 promises across leaders).


@asynccontextmanager
async def fake_standby(leader: str = ""):
    """A FakeStandby on 127.0.0.1 naming `leader` ("": none), served in this test's trio run."""
    async with trio_asyncio.open_loop():
        standby = FakeStandby(leader)
        await aio(standby.start)()
        try:
            yield standby
        finally:
            await aio(standby.stop)()


def free_port() -> int:
    with unused_port() as sock:
        return sock.getsockname()[1]


async def ctrl_c(process: trio.Process) -> str:
    """Interrupt a running command as an operator's Ctrl-C does; it must exit 0. Its stderr."""
    process.send_signal(signal.SIGINT)
    assert await process.wait() == 0
    stderr = b""
    while chunk := await process.stderr.receive_some(65536):
        stderr += chunk
    return stderr.decode()


def stderr_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.splitlines()


async def test_nodes_follows_the_leader_a_standby_names():
    async with running_scheduler() as scheduler, open_channel(scheduler.port) as channel:
        leader = f"127.0.0.1:{scheduler.port}"
        stream = await join_with_status(channel, scheduler, "node-a", 7001)
        async with fake_standby(leader) as standby:
            result = await run_cli("nodes", "--insecure", "--address", standby.address)
        await drop_stream(stream)
    assert result.returncode == 0, result.stderr
    assert [row["NODE"] for row in table(result.stdout)] == ["node-a"]
    assert stderr_lines(result) == [f"orka-scheduler: following leader at {leader}"]
    assert standby.calls == {"ListNodes": 1}


@pytest.mark.parametrize("named", ["", "not an address"], ids=["none", "malformed"])
async def test_nodes_tries_the_next_address_when_a_standby_names_no_leader(named):
    async with running_scheduler() as scheduler, fake_standby(named) as standby:
        leader = f"127.0.0.1:{scheduler.port}"
        result = await run_cli("nodes", "--insecure", "--address", f"{standby.address},{leader}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == " ".join(COLUMNS).split()
    assert stderr_lines(result) == [
        f"orka-scheduler: {standby.address} unavailable, trying {leader}"
    ]
    assert standby.calls == {"ListNodes": 1}


async def test_nodes_tries_the_next_address_after_a_dead_one():
    async with running_scheduler() as scheduler:
        dead, leader = f"127.0.0.1:{free_port()}", f"127.0.0.1:{scheduler.port}"
        result = await run_cli("nodes", "--insecure", "--address", f"{dead},{leader}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == " ".join(COLUMNS).split()
    assert stderr_lines(result) == [f"orka-scheduler: {dead} unavailable, trying {leader}"]


async def test_nodes_gives_up_at_once_when_no_scheduler_answers_at_any_address():
    """Nothing runs there: the --timeout of a minute is not spent (the IO guard is 20 s)."""
    dead, also_dead = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    with trio.fail_after(IO_GUARD):
        result = await run_cli(
            "nodes", "--insecure", "--timeout", "60", "--address", f"{dead},{also_dead}"
        )
    assert result.returncode == 1 and result.stdout == ""
    switch, last = stderr_lines(result)
    assert switch == f"orka-scheduler: {dead} unavailable, trying {also_dead}"
    assert last.startswith(
        f"orka-scheduler: no leader found at {dead}, {also_dead}; last: "
        f"cannot reach the scheduler at {also_dead}: "
    ), last


async def test_nodes_waits_for_a_standby_that_knows_no_leader_until_its_timeout():
    """An election under way: the standby answers, naming no leader; the command asks again
    (with backoff) until --timeout, then says so."""
    async with fake_standby("") as standby:
        with trio.fail_after(IO_GUARD):
            result = await run_cli(
                "nodes", "--insecure", "--timeout", "1", "--address", standby.address
            )
    assert result.returncode == 1 and result.stdout == ""
    assert stderr_lines(result) == [
        f"orka-scheduler: no leader found within 1 s (--timeout); last: {standby.address}: "
        "UNAVAILABLE: standby: not the leader; leader at (none yet)"
    ]
    # 1 s of waits of 25-50, 50-100, 100-200, 200-400, 400-800 ms: at most 6 calls.
    assert 3 <= standby.calls["ListNodes"] <= 6, standby.calls


async def test_nodes_waits_for_a_named_leader_until_its_timeout_asking_with_backoff():
    """A standby names a leader that is down (its lease has not expired yet): the command
    keeps looking until --timeout, with a backoff that bounds how often it asks."""
    dead = f"127.0.0.1:{free_port()}"
    async with fake_standby(dead) as standby:
        with trio.fail_after(IO_GUARD):
            result = await run_cli(
                "nodes", "--insecure", "--timeout", "1", "--address", standby.address
            )
    assert result.returncode == 1 and result.stdout == ""
    *switches, last = stderr_lines(result)
    assert last.startswith("orka-scheduler: no leader found within 1 s (--timeout); last: "), last
    assert set(switches) == {
        f"orka-scheduler: following leader at {dead}",
        f"orka-scheduler: {dead} unavailable, trying {standby.address}",
    }
    # 1 s of waits of 25-50, 50-100, 100-200, 200-400, 400-800 ms: at most 7 attempts in all.
    assert 2 <= standby.calls["ListNodes"] <= 4, standby.calls


async def test_watch_follows_the_leader_across_a_failover_and_loses_no_event():
    """watch --address STANDBY,FIRST: the standby names FIRST. FIRST stops; while no scheduler
    leads, the watch keeps asking; SECOND (the same data directory, another port) starts and
    events happen there before the standby names it. The watch resumes there after its last
    event: those events replayed, no second snapshot, one epoch, revisions increasing."""
    data_dir = tempfile.mkdtemp(prefix="orka-failover-")
    first, second = free_port(), free_port()

    def config(port: int):
        return make_config(server={"listen": f"127.0.0.1:{port}", "data_dir": data_dir})

    async with fake_standby(f"127.0.0.1:{first}") as standby:
        first_channel, second_channel = await make_channel(first), await make_channel(second)
        process = await trio.lowlevel.open_process(
            command(
                "watch",
                "--insecure",
                "--timeout",
                "15",
                "--address",
                f"{standby.address},127.0.0.1:{first}",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment(),
            cwd=REPO,
        )
        try:
            out = LineReader(process.stdout)
            async with running_scheduler(config(first)) as scheduler:
                epoch = scheduler.events.epoch
                assert (await out.line_with("SNAPSHOT")).split()[1:3] == ["SNAPSHOT", "0"]
                await FakeAgent(first_channel, "node-a", 7001).join()
                await out.line_with("JOINED")
            standby.leader = ""  # the election is under way
            asked = standby.calls["WatchEvents"]
            async with running_scheduler(config(second)) as scheduler:
                assert scheduler.events.epoch == epoch
                await FakeAgent(second_channel, "node-b", 7002).join()
                await FakeAgent(second_channel, "node-c", 7003).join()
                await wait_until(lambda: standby.calls["WatchEvents"] > asked)  # still asking
                standby.leader = f"127.0.0.1:{second}"
                resumed = [await out.line_with("JOINED"), await out.line_with("JOINED")]
                await FakeAgent(second_channel, "node-d", 7004).join()
                live = await out.line_with("JOINED")
                stderr = await ctrl_c(process)
        finally:
            first_channel.close()
            second_channel.close()
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert [line.split()[3] for line in resumed + [live]] == ["node-b", "node-c", "node-d"]
    assert sum("SNAPSHOT" in line for line in out.lines) == 1, out.lines
    revisions = [int(line.split()[0]) for line in out.lines]
    assert revisions == sorted(set(revisions)), out.lines
    switches = stderr.splitlines()
    assert "Traceback" not in stderr
    assert switches[0] == f"orka-scheduler: following leader at 127.0.0.1:{first}", switches
    assert switches[-1] == f"orka-scheduler: following leader at 127.0.0.1:{second}", switches
    assert f"orka-scheduler: 127.0.0.1:{first} unavailable, trying {standby.address}" in switches


async def test_watch_still_ends_quietly_on_ctrl_c_after_its_scheduler_was_killed(tmp_path):
    """A scheduler killed (-9) mid-watch: grpclib wakes the call by cancelling its task and
    reports a lost connection. The watch moves on to the next address (another epoch: a
    snapshot), and a Ctrl-C afterwards still ends it with 0 and no traceback."""
    port = free_port()
    config = tmp_path / "killed.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\ndata_dir = "{tmp_path / "data"}"\n'
        '[observability]\nhttp_listen = ""\n'
    )
    doomed = await trio.lowlevel.open_process(
        command("serve", "--insecure", "--config", str(config)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment(),
        cwd=REPO,
    )
    try:
        with trio.fail_after(IO_GUARD):
            while True:
                try:
                    await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await trio.sleep(0.05)
        async with running_scheduler() as other:
            addresses = f"127.0.0.1:{port},127.0.0.1:{other.port}"
            process = await trio.lowlevel.open_process(
                command("watch", "--insecure", "--address", addresses),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=environment(),
                cwd=REPO,
            )
            try:
                out = LineReader(process.stdout)
                await out.line_with("SNAPSHOT")
                doomed.kill()
                await doomed.wait()
                assert f"(epoch {other.events.epoch})" in await out.line_with("SNAPSHOT")
                stderr = await ctrl_c(process)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
    finally:
        if doomed.returncode is None:
            doomed.kill()
            await doomed.wait()
    assert stderr.splitlines() == [
        f"orka-scheduler: 127.0.0.1:{port} unavailable, trying 127.0.0.1:{other.port}"
    ], stderr


# -- the formatters ------------------------------------------------------------------------------


def node(node_id="node-a", **fields) -> pb.Node:
    defaults = dict(
        address="10.0.0.1:7000",
        state=pb.Node.READY,
        memory_total=8 * GIB,
        memory_free=4 * GIB,
        cpu_load=12.6,
        cpu_cores=4,
    )
    return pb.Node(id=node_id, **{**defaults, **fields})


def row(*cells: str) -> dict[str, str]:
    """One row of `table`, a cell per column."""
    return dict(zip(COLUMNS, cells, strict=True))


def test_format_nodes_aligns_columns_and_fills_what_is_unknown():
    now = time.time()
    text = admin.format_nodes(
        [
            node(instance_ids=["web-1", "web-2"], last_seen_unix=now - 5),
            node(
                "old",
                address="",
                state=pb.Node.LOST,
                memory_total=0,
                memory_free=0,
                cpu_load=3,
                cpu_cores=0,
            ),
            node("gone", state=pb.Node.LEFT, last_seen_unix=now + 60),  # clock skew: not negative
        ]
    )
    header = text.splitlines()[0]
    assert all(header.index(a) < header.index(b) for a, b in itertools.pairwise(COLUMNS)), header
    assert not any(line.endswith(" ") for line in text.splitlines())
    assert table(text) == [
        row("node-a", "READY", "10.0.0.1:7000", "13% of 4", "4.0/8.0 GiB", "2", "5s ago"),
        row("old", "LOST", "", "3%", "-", "0", "-"),
        row("gone", "LEFT", "10.0.0.1:7000", "13% of 4", "4.0/8.0 GiB", "0", "0s ago"),
    ]


def test_format_nodes_of_no_nodes_is_the_header():
    assert admin.format_nodes([]).split() == " ".join(COLUMNS).split()


def test_format_nodes_shows_a_state_it_does_not_know_as_its_number():
    assert table(admin.format_nodes([node(state=7)]))[0]["STATE"] == "7"


def test_format_event_snapshot_node_and_instance():
    snapshot = pb.ClusterEvent(epoch="e1", revision=3)
    snapshot.snapshot.nodes.extend([node(), node("node-b")])
    snapshot.snapshot.instances.add(instance_id="web-1", node_id="node-a")
    assert admin.format_event(snapshot) == "       3 SNAPSHOT 2 nodes, 1 instances (epoch e1)"

    joined = pb.ClusterEvent(epoch="e1", revision=4)
    joined.node.kind = pb.NodeEvent.JOINED
    joined.node.node.CopyFrom(node())
    assert admin.format_event(joined) == "       4 JOINED   node node-a 10.0.0.1:7000"

    lost = pb.ClusterEvent(epoch="e1", revision=123456789)
    lost.node.kind = pb.NodeEvent.LOST
    lost.node.node.CopyFrom(node(instance_ids=["web-1", "web-2"]))
    assert admin.format_event(lost) == (
        "123456789 LOST     node node-a 10.0.0.1:7000 instances: web-1, web-2"
    )

    ended = pb.ClusterEvent(epoch="e1", revision=5)
    ended.instance.instance_id, ended.instance.node_id = "web-1", "node-a"
    ended.instance.status.code = pb.Status.TERMINATED
    ended.instance.status.message = "exit 0"
    assert admin.format_event(ended) == "       5 INSTANCE web-1 on node-a: TERMINATED (exit 0)"

    waiting = pb.ClusterEvent(epoch="e1", revision=6)
    waiting.instance.instance_id, waiting.instance.node_id = "web-2", "node-b"
    waiting.instance.status.code = pb.Status.WAITING
    assert admin.format_event(waiting) == "       6 INSTANCE web-2 on node-b: WAITING"


def test_format_event_of_a_node_event_kind_it_does_not_know():
    """A newer scheduler may add NodeEvent kinds: `watch` must print them, not crash."""
    event = pb.ClusterEvent(epoch="e1", revision=7)
    event.node.kind = 9
    event.node.node.CopyFrom(node())
    try:
        line = admin.format_event(event)
    except KeyError as err:
        raise AssertionError(
            "format_event raises KeyError on an unknown NodeEvent kind (admin.format_event "
            "must look EVENT_KINDS up with the number as fallback, as format_nodes and the "
            "INSTANCE branch do): `watch` would die with a traceback"
        ) from err
    assert "9" in line.split() and "node-a" in line
