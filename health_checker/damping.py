"""Flap damping, as BGP route flap dampening (RFC 2439) does it for routes: a server whose state
keeps changing is held down until it has been steady for a while.

Every state change (up to down, or down to up, as the rise/fall counter decides) adds 1 to the
server's penalty, which decays with a half-life. Above `flap_suppress` the server is FLAPPING:
held down whatever its checks say, until the penalty has decayed below `flap_reuse`. Changes
while held down still add to the penalty, so the hold-down grows with repeated flapping: it is
half_life x log2(penalty / reuse) after the last change, and at most `flap_max_hold` (the penalty
is capped where it would take that long to decay to reuse).

Pure: the caller passes the (monotonic) time in, so tests pin the clock.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


class DampingSettings(Protocol):
    """The check settings damping reads (frontgate.config.CheckSpec)."""
    flap_damping: bool
    flap_half_life: float
    flap_suppress: float
    flap_reuse: float
    flap_max_hold: float


def ceiling(spec: DampingSettings) -> float:
    """The highest penalty: the one that takes flap_max_hold to decay to flap_reuse."""
    return spec.flap_reuse * 2 ** (spec.flap_max_hold / spec.flap_half_life)


@dataclass(frozen=True)
class Damping:
    penalty: float = 0.0
    at: float = 0.0                  # when `penalty` was worked out (monotonic seconds)
    flapping: bool = False           # held down
    changes: int = 0                 # state changes counted since the penalty was last zero, for the log

    def decayed(self, spec: DampingSettings, now: float) -> float:
        elapsed = max(0.0, now - self.at)
        return self.penalty * 0.5 ** (elapsed / spec.flap_half_life)

    def tick(self, spec: DampingSettings, now: float) -> "Damping":
        """The penalty decayed to `now`; a flapping server whose penalty is below reuse is let go."""
        if not spec.flap_damping:
            return Damping()
        penalty = self.decayed(spec, now)
        flapping = self.flapping and penalty >= spec.flap_reuse
        if penalty < 0.01:
            return Damping(at=now)
        return Damping(penalty, now, flapping, self.changes)

    def change(self, spec: DampingSettings, now: float) -> "Damping":
        """One state change at `now`: penalty + 1 (up to the ceiling); above suppress, flapping."""
        if not spec.flap_damping:
            return Damping()
        current = self.tick(spec, now)
        penalty = min(current.penalty + 1.0, ceiling(spec))
        return Damping(penalty, now, current.flapping or penalty > spec.flap_suppress, current.changes + 1)

    def hold_left(self, spec: DampingSettings, now: float) -> float:
        """Seconds until a flapping server is let go, if it changes state no more."""
        penalty = self.decayed(spec, now)
        if not self.flapping or penalty < spec.flap_reuse:
            return 0.0
        return spec.flap_half_life * math.log2(penalty / spec.flap_reuse)
