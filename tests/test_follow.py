"""Following the leader (scheduler/follow.py), as plain functions: which address next, the
backoff's bounds, the addresses a command line names, and the retry loop's decisions (no
network: attempts are plain coroutines).

The same code over real sockets, against fake standbys and real schedulers: test_admin_cli.py
(`nodes`, `watch`) and test_simulator.py (simulated Agents and Controller).
"""

from __future__ import annotations

import asyncio
import random

import pytest

from scheduler.config import ConfigError
from scheduler.follow import (
    FIRST_RETRY,
    LARGEST_RETRY,
    Backoff,
    GaveUp,
    Leader,
    NotServing,
    health,
    retry,
    split_addresses,
)

A, B, C, D = "10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051", "10.0.0.4:50051"


# -- which address next --------------------------------------------------------------------------


def test_starts_at_the_first_address():
    assert Leader([A, B, C]).current == A


def test_a_named_leader_is_called_next_even_outside_the_list():
    leader = Leader([A, B])
    assert leader.failed(A, D) == f"following leader at {D}"
    assert leader.current == D


@pytest.mark.parametrize("hint", [None, ""], ids=["no answer", "no leader named"])
def test_otherwise_the_next_address_in_the_list_round_and_round(hint):
    leader = Leader([A, B, C])
    assert leader.failed(A, hint) == f"{A} unavailable, trying {B}"
    assert leader.failed(B, hint) == f"{B} unavailable, trying {C}"
    assert leader.failed(C, hint) == f"{C} unavailable, trying {A}"
    assert leader.current == A


def test_after_a_named_leader_outside_the_list_fails_the_list_goes_on_after_its_namer():
    leader = Leader([A, B, C])
    leader.failed(A, None)  # → B
    leader.failed(B, D)  # B, a standby, names D (its advertise address)
    assert leader.failed(D, None) == f"{D} unavailable, trying {C}"


def test_a_named_leader_in_the_list_continues_the_round_from_there():
    leader = Leader([A, B, C])
    leader.failed(A, C)
    assert leader.failed(C, None) == f"{C} unavailable, trying {A}"


def test_a_failure_at_an_address_already_left_changes_nothing():
    """Callers share one Leader: the second to fail at A must not skip B."""
    leader = Leader([A, B, C])
    assert leader.failed(A, None) is not None
    assert leader.failed(A, None) is None
    assert leader.failed(A, D) is None
    assert leader.current == B


def test_a_standby_naming_itself_is_taking_over_so_it_is_called_again():
    leader = Leader([A, B])
    assert leader.failed(A, A) is None
    assert leader.current == A


def test_one_address_is_called_again_without_a_line():
    leader = Leader([A])
    assert leader.failed(A, "") is None
    assert leader.failed(A, None) is None
    assert leader.current == A


def test_exhausted_once_no_scheduler_answered_at_any_listed_address():
    leader = Leader([A, B])
    leader.failed(A, None)
    assert not leader.exhausted
    leader.failed(B, None)
    assert leader.exhausted


@pytest.mark.parametrize("answer", ["", D], ids=["no leader named", "a leader named"])
def test_a_scheduler_that_answers_keeps_the_search_going(answer):
    """A standby that knows no leader (an election under way) or names one is worth waiting
    for, up to the deadline."""
    leader = Leader([A, B])
    leader.failed(A, None)
    leader.failed(B, answer)
    leader.failed(leader.current, None)
    assert not leader.exhausted


def test_a_served_call_starts_the_count_again():
    leader = Leader([A, B])
    leader.failed(A, None)
    leader.served(B)
    leader.failed(B, None)
    assert not leader.exhausted


def test_an_address_outside_the_list_never_completes_a_round():
    leader = Leader([A])
    leader.failed(A, D)
    leader.failed(D, None)
    assert not leader.exhausted and leader.current == A


def test_leader_of_what_callers_name():
    assert Leader.of(("127.0.0.1", 50051)).addresses == ["127.0.0.1:50051"]
    assert Leader.of(("::1", 50051)).addresses == ["[::1]:50051"]
    assert Leader.of(f"{A}, {B},{A}").addresses == [A, B]
    assert Leader.of([B, A]).addresses == [B, A]
    shared = Leader([A])
    assert Leader.of(shared) is shared
    with pytest.raises(ValueError):
        Leader([])


# -- the addresses of a command line -------------------------------------------------------------


def test_split_addresses_keeps_order_drops_repeats_and_blanks_around_commas():
    assert split_addresses(f"{A}, {B} ,{A},[::1]:7") == [A, B, "[::1]:7"]
    assert split_addresses(A) == [A]


@pytest.mark.parametrize("text", ["", " , ", f"{A},", "host", f"{A},nope:port", "::1:7"])
def test_split_addresses_names_the_option_for_a_bad_list(text):
    with pytest.raises(ConfigError) as caught:
        split_addresses(text, "--address")
    assert caught.value.key == "--address"


# -- backoff -------------------------------------------------------------------------------------


def test_backoff_doubles_from_first_to_largest_with_jitter_in_the_upper_half():
    backoff = Backoff(rng=random.Random(7))
    steps = [FIRST_RETRY * 2**n for n in range(20)]
    steps = [min(step, LARGEST_RETRY) for step in steps]
    delays = [backoff.next() for _ in steps]
    for step, delay in zip(steps, delays, strict=True):
        assert step / 2 <= delay <= step, (step, delay)
    assert max(delays) <= LARGEST_RETRY
    assert delays[-1] >= LARGEST_RETRY / 2  # it got there and stays there
    backoff.reset()
    assert backoff.next() <= FIRST_RETRY


def test_backoff_jitter_spreads_clients_that_failed_together():
    delays = {round(Backoff(rng=random.Random(seed)).next(), 6) for seed in range(20)}
    assert len(delays) > 10


def test_the_bounds_are_what_decisions_md_says():
    assert (FIRST_RETRY, LARGEST_RETRY) == (0.05, 2.0)


# -- the retry loop ------------------------------------------------------------------------------


def attempts_answering(answers: dict[str, list]):
    """An attempt that answers, per address, the next of its `answers` (raising the
    NotServing ones); records the addresses called."""
    called: list[str] = []

    async def attempt(address: str):
        called.append(address)
        answer = answers[address].pop(0)
        if isinstance(answer, NotServing):
            raise answer
        return answer

    return attempt, called


def refused(address: str, hint: str | None = None) -> NotServing:
    return NotServing(address, hint, ConnectionRefusedError("refused"))


def test_retry_follows_the_named_leader_and_reports_each_switch():
    leader = Leader([A, B])
    attempt, called = attempts_answering({A: [refused(A)], B: [refused(B, D)], D: ["nodes"]})
    lines: list[str] = []
    assert asyncio.run(retry(leader, attempt, report=lines.append)) == "nodes"
    assert called == [A, B, D]
    assert lines == [f"{A} unavailable, trying {B}", f"following leader at {D}"]
    assert leader.current == D


def test_retry_gives_up_once_no_scheduler_answers_at_any_address():
    leader = Leader([A, B])
    attempt, called = attempts_answering({A: [refused(A)], B: [refused(B)]})
    with pytest.raises(GaveUp) as caught:
        asyncio.run(retry(leader, attempt, give_up=True))
    assert called == [A, B]
    assert not caught.value.timed_out
    assert (caught.value.first.address, caught.value.last.address) == (A, B)


def test_retry_waits_for_a_named_leader_until_its_deadline():
    """A standby keeps naming a leader that refuses: a scheduler answers, so the deadline
    ends it; the backoff bounds how often the standby is asked meanwhile."""
    leader = Leader([A])
    answers = {A: [refused(A, D)] * 1000, D: [refused(D)] * 1000}
    attempt, called = attempts_answering(answers)

    async def main():
        deadline = asyncio.get_running_loop().time() + 0.5
        await retry(leader, attempt, deadline=deadline, give_up=True)

    with pytest.raises(GaveUp) as caught:
        asyncio.run(main())
    assert caught.value.timed_out
    # 0.5 s of waits drawn in [half, all] of 50, 100, 200, 400 ms: at most 6 attempts.
    assert 3 <= len(called) <= 6, called


def test_retry_without_give_up_or_deadline_keeps_going():
    leader = Leader([A])
    attempt, called = attempts_answering({A: [refused(A)] * 3 + ["served"]})
    assert asyncio.run(retry(leader, attempt, backoff=Backoff(0.001, 0.002))) == "served"
    assert called == [A] * 4


# -- /healthz -------------------------------------------------------------------------------------


def test_health_is_the_http_status_of_healthz_or_none_when_nothing_answers():
    async def main() -> tuple[int | None, int | None, list[bytes]]:
        asked: list[bytes] = []

        async def standby(reader, writer) -> None:
            asked.append(await reader.readline())
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(standby, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            answered = await health(port)
        return answered, await health(port), asked  # closed: nothing answers

    answered, closed, asked = asyncio.run(main())
    assert (answered, closed) == (503, None)
    assert asked == [b"GET /healthz HTTP/1.1\r\n"]
