"""When a server is checked next: HAProxy's `inter`, `fastinter` and `downinter`, with jitter.

Pure: the random source is passed in, so tests pin it.
"""
from __future__ import annotations

import random
from typing import Callable

from frontgate.config import CheckSpec
from health_checker.rise_fall import RiseFall


def base_interval(spec: CheckSpec, health: RiseFall) -> float:
    """`fastinter` while the server is on its way up or down (a transition is confirmed sooner),
    `downinter` while it is steadily down (a dead server need not be hammered), else `interval`."""
    if health.transitioning and spec.fastinter is not None:
        return spec.fastinter
    if not health.up and not health.transitioning and spec.downinter is not None:
        return spec.downinter
    return spec.interval


def next_wait(spec: CheckSpec, health: RiseFall, uniform: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds from the start of this check to the start of the next. The jitter (interval x
    (1 +- jitter)) keeps the checks of many servers, and of several checkers, from running in lockstep."""
    interval = base_interval(spec, health)
    return interval * uniform(1 - spec.jitter, 1 + spec.jitter) if spec.jitter else interval
