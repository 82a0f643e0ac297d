"""frontgate.sweep: idle deadlines of many connections on one loop timer, on a real event loop."""
from __future__ import annotations

import asyncio

from frontgate.sweep import Sweep, interval_for


class Member:
    def __init__(self, name: str, deadline: float, log: list, ends: tuple = (), sweep: Sweep | None = None):
        self.name, self.deadline, self.log = name, deadline, log
        self.ends, self.sweeper = list(ends), sweep      # members its end ends too (its other side)

    def sweep(self, now: float) -> bool:
        if now < self.deadline:
            return True
        self.log.append((self.name, now))
        for other in self.ends:
            self.sweeper.discard(other)
        return False


def on_a_loop(interval: float, body) -> None:
    """Run `await body(loop, sweep, log)` on a fresh event loop with a Sweep of `interval`."""
    async def run():
        loop = asyncio.get_running_loop()
        await body(loop, Sweep(loop, interval), [])
    asyncio.run(run())


def test_interval_is_a_quarter_of_short_timeouts_and_a_second_for_long_ones():
    assert interval_for(1.0) == 0.25 and interval_for(10.0) == 1.0 and interval_for(3600.0) == 1.0


def test_expired_members_are_told_once_and_leave_and_the_timer_stops_when_none_is_left():
    async def body(loop, sweep, log):
        start = loop.time()
        soon, later = Member("soon", start + 0.1, log), Member("later", start + 0.3, log)
        sweep.add(soon)
        sweep.add(later)
        await asyncio.sleep(0.2)
        assert [name for name, _ in log] == ["soon"] and sweep.members == {later}
        later.deadline += 0.2                 # activity: the deadline moves, nothing else to do
        await asyncio.sleep(0.25)
        assert [name for name, _ in log] == ["soon"]
        await asyncio.sleep(0.2)
        assert [name for name, _ in log] == ["soon", "later"] and not sweep.members
        assert sweep._handle is None          # no timer while nobody is swept
        # Seen no later than one interval after the deadline (plus the loop's own slack).
        assert log[0][1] - soon.deadline < 0.05 + 0.05
        sweep.add(Member("again", loop.time(), log))
        assert sweep._handle is not None
        await asyncio.sleep(0.1)
        assert log[-1][0] == "again" and sweep._handle is None
    on_a_loop(0.05, body)


def test_a_member_ended_by_another_during_a_tick_is_not_swept_after_it():
    async def body(loop, sweep, log):
        now = loop.time()
        first = Member("first", now, log, sweep=sweep)
        second = Member("second", now, log, ends=[first], sweep=sweep)
        first.ends.append(second)
        sweep.add(first)
        sweep.add(second)
        await asyncio.sleep(0.1)
        assert len(log) == 1 and not sweep.members
    on_a_loop(0.02, body)


def test_a_discarded_member_is_never_swept_and_close_stops_the_timer():
    async def body(loop, sweep, log):
        gone = Member("gone", loop.time(), log)
        sweep.add(gone)
        sweep.discard(gone)
        sweep.add(Member("stays", loop.time() + 60, log))
        await asyncio.sleep(0.1)
        assert log == []
        sweep.close()
        assert sweep._handle is None and not sweep.members
    on_a_loop(0.02, body)
