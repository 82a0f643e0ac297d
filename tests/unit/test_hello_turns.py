"""HelloTurns: how many ClientHellos the terminator answers per event-loop pass, and in what order."""
from __future__ import annotations

import asyncio

import uvloop

from tls_terminator.hello_turns import HelloTurns


class Conn:
    def __init__(self, name: str, served: list[str]):
        self.name, self.served, self.closed = name, served, False

    def take_turn(self) -> None:
        self.served.append(self.name)


def test_a_burst_is_answered_a_few_per_pass_first_come_first_served():
    async def main() -> None:
        turns = HelloTurns(asyncio.get_running_loop(), per_pass=2)
        served: list[str] = []
        conns = [Conn(f"c{i}", served) for i in range(7)]
        now = [turns.take(c) for c in conns]
        assert now == [True, True] + [False] * 5          # two answered in this pass, five wait
        conns[3].closed = True                             # gone while waiting: skipped
        await asyncio.sleep(0)                             # one pass
        assert served == ["c2", "c4"]
        late = Conn("late", served)
        assert turns.take(late) is False                   # no jumping the queue
        for _ in range(3):
            await asyncio.sleep(0)
        assert served == ["c2", "c4", "c5", "c6", "late"]
        for _ in range(2):
            await asyncio.sleep(0)                         # a pass with no turns taken...
        assert turns.take(Conn("idle", served)) is True    # ...and the next hello goes straight in
        assert not turns.waiting

    uvloop.run(asyncio.wait_for(main(), 5))
