"""Flap damping's math (health_checker/damping.py) on an injected clock."""
from __future__ import annotations

import dataclasses

import pytest

from frontgate.config import CheckSpec
from health_checker.damping import Damping, ceiling

DEFAULT = CheckSpec()      # half-life 60 s, suppress above 4, reuse below 2, hold at most 600 s


def run(spec: CheckSpec, change_times: list[float], at: float) -> Damping:
    d = Damping()
    for t in change_times:
        d = d.change(spec, t)
    return d.tick(spec, at)


@pytest.mark.parametrize("changes,at,flapping", [
    ([0, 10], 10, False),                          # down and back up: never held down
    ([0, 10, 20, 30], 30, False),                  # four quick changes: at the threshold, not above
    ([0, 10, 20, 30, 40], 40, True),               # the fifth within the half-life: FLAPPING
    ([0, 60, 120, 180, 240, 300, 360], 360, False),  # one change a minute, forever: penalty stays near 2
    ([t * 20.0 for t in range(12)], 220, True),    # one every 20 s: above 4 after a while (2.7 a minute)
    ([t * 30.0 for t in range(40)], 1170, False),  # one every 30 s never gets above 4 (limit 3.4)
    ([0, 1, 2, 3, 4], 4 + 60, True),               # held down: penalty ~2.5 after one half-life
    ([0, 1, 2, 3, 4], 4 + 90, False),              # ... and let go once it decays below 2
])
def test_when_a_server_is_held_down(changes, at, flapping):
    assert run(DEFAULT, changes, at).flapping is flapping


def test_the_hold_down_grows_with_repeated_flapping():
    five = run(DEFAULT, [0, 1, 2, 3, 4], 4)
    ten = run(DEFAULT, list(range(10)), 9)
    assert five.flapping and ten.flapping
    assert five.hold_left(DEFAULT, 4) == pytest.approx(60 * 1.32, abs=3)      # log2(5 / 2) half-lives, less a little decay
    assert ten.hold_left(DEFAULT, 9) == pytest.approx(60 * 2.32, abs=6)       # log2(10 / 2)
    # Let go exactly when hold_left said, if nothing else happens.
    left = ten.hold_left(DEFAULT, 9)
    assert ten.tick(DEFAULT, 9 + left - 1).flapping and not ten.tick(DEFAULT, 9 + left + 1).flapping


def test_the_hold_down_is_bounded_by_max_hold():
    spec = dataclasses.replace(DEFAULT, flap_max_hold=120)
    d = run(spec, list(range(1000)), 999)
    assert d.penalty == pytest.approx(ceiling(spec)) == pytest.approx(8.0)
    assert d.hold_left(spec, 999) == pytest.approx(120)


def test_changes_while_held_down_keep_it_held():
    d = run(DEFAULT, [0, 1, 2, 3, 4], 4)
    d = d.change(DEFAULT, 80)        # it would have been let go at ~84 s
    assert d.tick(DEFAULT, 100).flapping


def test_off():
    spec = dataclasses.replace(DEFAULT, flap_damping=False)
    assert run(spec, list(range(100)), 99) == Damping()
