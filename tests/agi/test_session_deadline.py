"""The per-command deadline of an AGI conversation: one watchdog timer per session, moved on
from command to command, must time out exactly the late replies, never an answered one."""

from __future__ import annotations

import asyncio
import time

import pytest

from callwarden.agi.session import AgiSession


async def conversation(replies: list[tuple[float, bytes | None]], commands: list[str], *,
                       timeout: float, pause: float = 0.0) -> list[object]:
    """A peer answering the n-th command after replies[n][0] s with replies[n][1] (None:
    never); the server side sends ``commands``, ``pause`` s apart. Returns each outcome."""
    outcomes: list[object] = []
    done = asyncio.Event()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for delay, reply in replies:
            if not await reader.readline():
                break
            if reply is None:
                await done.wait()
                break
            await asyncio.sleep(delay)
            writer.write(reply)
        await done.wait()
        writer.close()

    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    session = AgiSession(None, {}, reader, writer, command_timeout=timeout)
    try:
        for command in commands:
            started = time.monotonic()
            try:
                reply = await session.send_command(command)
                outcomes.append(reply.text)
            except TimeoutError:
                outcomes.append(("timeout", time.monotonic() - started))
                break
            await asyncio.sleep(pause)
    finally:
        session.close()
        done.set()
        writer.close()
        server.close()
    return outcomes


def test_a_reply_that_never_comes_times_out_after_command_timeout() -> None:
    outcomes = asyncio.run(conversation([(0, b"200 result=1\n"), (0, None)], ["NOOP", "NOOP"],
                                        timeout=0.2))
    assert outcomes[0] == "200 result=1"
    kind, took = outcomes[1]  # type: ignore[misc]
    assert kind == "timeout" and took >= 0.19


def test_answered_commands_spread_over_many_deadlines_do_not_time_out() -> None:
    """Each reply takes 60% of the deadline and the conversation lasts several deadlines, with
    gaps longer than a deadline between commands (a decision in between): the watchdog fires
    in between and must re-arm, never expire an answered command."""
    replies = [(0.12, b"200 result=1\n")] * 5
    outcomes = asyncio.run(conversation(replies, ["NOOP"] * 5, timeout=0.2, pause=0.25))
    assert outcomes == ["200 result=1"] * 5


@pytest.mark.parametrize("late", [1, 3])
def test_only_the_late_reply_times_out(late: int) -> None:
    replies = [(0.01, b"200 result=1\n")] * late + [(0.5, b"200 result=1\n")]
    outcomes = asyncio.run(conversation(replies, ["NOOP"] * (late + 1), timeout=0.2))
    assert outcomes[:late] == ["200 result=1"] * late
    assert outcomes[late][0] == "timeout"  # type: ignore[index]


def test_a_cancelled_conversation_stays_cancelled() -> None:
    """Cancellation from outside (the route budget, shutdown) is not turned into a timeout."""

    async def body() -> None:
        task = asyncio.ensure_future(conversation([(0, None)], ["NOOP"], timeout=5))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(body())
