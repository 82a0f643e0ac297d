"""HAProxy's rise/fall health counter, as a pure value.

`health` runs from 0 to rise + fall - 1. The server is up when health >= rise.
- A success while down adds one; reaching `rise` makes the server up, and a server that is up is
  then set to full health (rise + fall - 1), so it takes `fall` failures in a row to go down.
- A failure while up takes one off; going below `rise` makes the server down, and health drops to
  0, so it takes `rise` successes in a row to come back.

A fresh checker starts every server up, so that starting or restarting the checker never takes
traffic away from healthy servers. How firmly is `init_state` (health-checker.toml):
- "fully-up" (the default; HAProxy's `init-state fully-up`): at full health, so a server needs
  `fall` failed checks to go down, the first one included. A backend that is still starting when
  the checker first probes it (as at `make deploy`) is not taken out of service for it.
- "provisional": health == rise, so a server that fails its very first check goes down at once
  instead of after `fall` checks: a backend dead at start is not served for fall x interval seconds.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from frontgate.config import INIT_STATES


@dataclass(frozen=True)
class RiseFall:
    rise: int
    fall: int
    health: int
    successes: int = 0     # consecutive, for the log line
    failures: int = 0

    @staticmethod
    def initial(rise: int, fall: int, init_state: str = "fully-up") -> "RiseFall":
        if rise < 1 or fall < 1:
            raise ValueError(f"rise and fall must be >= 1, got rise={rise} fall={fall}")
        if init_state not in INIT_STATES:
            raise ValueError(f"init_state must be one of {INIT_STATES}, got {init_state!r}")
        return RiseFall(rise=rise, fall=fall, health=rise + fall - 1 if init_state == "fully-up" else rise)

    @property
    def up(self) -> bool:
        return self.health >= self.rise

    @property
    def transitioning(self) -> bool:
        """Between the two steady states: up with failures counted against it, or down with
        successes counted towards rise. HAProxy checks faster then (`fastinter`)."""
        return 0 < self.health < self.rise + self.fall - 1

    def record(self, ok: bool) -> "RiseFall":
        full = self.rise + self.fall - 1
        if ok:
            health = self.health + 1
            if health >= self.rise:
                health = full      # up (again): it now takes `fall` failures to go down
            return replace(self, health=health, successes=self.successes + 1, failures=0)
        health = self.health - 1 if self.health > self.rise else 0
        return replace(self, health=health, successes=0, failures=self.failures + 1)

    def with_limits(self, rise: int, fall: int) -> "RiseFall":
        """The same up/down state under new rise/fall settings (config reload)."""
        if (rise, fall) == (self.rise, self.fall):
            return self
        fresh = RiseFall.initial(rise, fall)
        health = rise + fall - 1 if self.up else min(self.health, rise - 1)
        return replace(fresh, health=health, successes=self.successes, failures=self.failures)

    def status(self) -> str:
        """HAProxy's progress notation: "2/3 UP" = two more failures to go down (of fall=3);
        "1/2 DOWN" = one success of the two (rise=2) needed to come up."""
        if self.up:
            return f"{self.health - self.rise + 1}/{self.fall} UP"
        return f"{self.health}/{self.rise} DOWN"
