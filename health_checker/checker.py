"""The checker: one probe loop per server, rise/fall counting, and the state file writer.

Every server of every app in the router config gets its own task that probes it every `interval`
seconds (`fastinter` while it is changing state, `downinter` while down, all with jitter: see
schedule.py). Results go through the rise/fall counter; an up/down transition is logged with its
reason and wakes the writer, which replaces the state file at once. Without changes the file is
still rewritten every `heartbeat` seconds, so the router can tell a live checker from a dead one.
"""
from __future__ import annotations

import asyncio
import glob
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from frontgate import health_state, routes
from frontgate.route_store_file import follower_for, followed_table
from frontgate.config import App, CheckerConfig, CheckSpec, ConfigError, Server, load_checker_config
from frontgate.health_state import HealthState, ServerState
from frontgate.process_status import ProcessStatus
from health_checker.damping import Damping
from health_checker.probes import ProbeResult, check_host, probe
from health_checker.rise_fall import RiseFall
from health_checker.schedule import next_wait

log = logging.getLogger("health-checker")

ROUTES_REFRESH_INTERVAL = 0.5     # seconds between two stats of the route table file


@dataclass
class Target:
    """One server being watched, and what is known about it."""
    key: str                     # "app/host:port", the state file key
    app: App
    server: Server
    spec: CheckSpec
    health: RiseFall
    since: float                 # wall-clock time of the last transition (or of the start)
    last: ProbeResult | None = None
    task: asyncio.Task | None = field(default=None, repr=False)
    damping: Damping = Damping()

    @property
    def state(self) -> str:
        """What the router is told: down while held down by flap damping, whatever the checks say."""
        return "up" if self.health.up and not self.damping.flapping else "down"

    def host(self) -> str:
        return check_host(self.app, self.spec, self.server.address)


def targets_of(config: CheckerConfig, table: routes.RouteTable = routes.EMPTY) -> dict[str, tuple[App, Server, CheckSpec]]:
    """Every server of every app, by state file key: the router config and the dynamic route
    table (the router serves both) are the one server list."""
    return {app.server_key(server): (app, server, config.spec_for(app.name, app.server_key(server)))
            for app in routes.merged(config.router, table).apps for server in app.servers}


class Checker:
    def __init__(self, config: CheckerConfig, config_path: Path, status: ProcessStatus | None = None):
        self.config = config
        self.config_path = config_path
        self.status = status or ProcessStatus(None, "health-checker", config_path)    # reload outcomes
        self.targets: dict[str, Target] = {}
        self.generation = 0
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._write_error: str | None = None
        self._failure: BaseException | None = None
        self.routes = follower_for(config.router.routes.file)     # dynamic routes' servers too
        self.routes.refresh()

    # ---- lifecycle

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        self.generation = self._previous_generation()
        _remove_leftover_temp_files(self.config.state_file)
        self._warn_about_heartbeat()
        self._apply(self.config)
        log.info("started: %d servers from %s, state file %s, heartbeat %gs",
                 len(self.targets), self.config.router.path, self.config.state_file, self.config.heartbeat)
        writer = self._task(self._writer(), "state-writer")
        self._task(self._follow_routes(), "route-follower")
        try:
            await self._stopping.wait()
        finally:
            writer.cancel()
            for target in self.targets.values():
                target.task.cancel()
            await asyncio.gather(writer, *(t.task for t in self.targets.values()), return_exceptions=True)
        if self._failure is not None:
            # A bug, not a probe failure (those are results): exit non-zero, supervisord restarts us.
            raise self._failure
        log.info("stopped")

    def stop(self) -> None:
        self._stopping.set()

    def _task(self, coro, name: str) -> asyncio.Task:
        """A task whose unexpected death stops the checker instead of silently ending one duty."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical("task %r failed, stopping: %r", task.get_name(), task.exception())
            self._failure = self._failure or task.exception()
            self.stop()

    def reload(self) -> None:
        """SIGHUP: re-read the config; on any error keep running with the old one."""
        fingerprint = self.status.config_on_disk()
        try:
            config = load_checker_config(self.config_path)
        except ConfigError as e:
            log.error("reload failed, keeping the running config: %s", e)
            self.status.reloaded(error=f"keeping the running config: {e}")
            return
        old_state_file = self.config.state_file
        if config.router.routes.file != self.routes.path:
            self.routes = follower_for(config.router.routes.file)
            self.routes.refresh()
        self.config = config
        self._warn_about_heartbeat()
        if config.state_file != old_state_file:
            log.warning("state file moved from %s to %s", old_state_file, config.state_file)
        added, removed = self._apply(config)
        log.info("reloaded %s: %d servers (%d added, %d removed)", self.config_path, len(self.targets), added, removed)
        self.status.reloaded(fingerprint)
        self._changed.set()

    async def _follow_routes(self) -> None:
        while True:
            await asyncio.sleep(ROUTES_REFRESH_INTERVAL)
            if self.routes.refresh():
                added, removed = self._apply(self.config)
                log.info("route table version %d: %d servers (%d added, %d removed)",
                         followed_table(self.routes).version, len(self.targets), added, removed)
                self._changed.set()

    def _apply(self, config: CheckerConfig) -> tuple[int, int]:
        """Bring the targets in line with `config`: start new servers, stop removed ones, and let
        kept ones keep their up/down state under their (maybe new) check settings."""
        wanted = targets_of(config, followed_table(self.routes))
        removed = [key for key in self.targets if key not in wanted]
        for key in removed:
            self.targets.pop(key).task.cancel()
        added = 0
        for key, (app, server, spec) in wanted.items():
            target = self.targets.get(key)
            if target is None:
                # Up until shown otherwise (see rise_fall): a fresh checker must not black-hole traffic.
                target = Target(key=key, app=app, server=server, spec=spec,
                                health=RiseFall.initial(spec.rise, spec.fall, config.init_state), since=time.time())
                target.task = self._task(self._watch(target), f"check {key}")
                self.targets[key] = target
                added += 1
            else:
                changed_check = spec != target.spec
                target.app, target.server, target.spec = app, server, spec
                target.health = target.health.with_limits(spec.rise, spec.fall)
                if changed_check:
                    # Check now with the new settings, rather than after a wait computed from the
                    # old ones (a downinter of minutes would delay a fixed check that long).
                    target.task.cancel()
                    target.task = self._task(self._watch(target), f"check {key}")
        return added, len(removed)

    def _warn_about_heartbeat(self) -> None:
        stale_after = self.config.router.state_stale_after
        if self.config.heartbeat >= stale_after:
            log.warning("heartbeat %gs is not below the router's state_stale_after %gs: the router will "
                        "often find the state stale and ignore it", self.config.heartbeat, stale_after)

    def _previous_generation(self) -> int:
        # Carry the generation on across restarts, so it only ever grows.
        try:
            return health_state.read(self.config.state_file).generation
        except (OSError, health_state.HealthStateError):
            return 0

    # ---- probing

    async def _watch(self, target: Target) -> None:
        """Probe `target` now and then again and again, each wait measured start to start."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            result = await probe(target.server.address, target.spec, target.host(), target.server.send_proxy)
            self.record(target, result)
            next_at = max(next_at + next_wait(target.spec, target.health), loop.time())
            await asyncio.sleep(next_at - loop.time())

    def record(self, target: Target, result: ProbeResult, now: float | None = None) -> None:
        before = target.health
        served = target.state
        first = target.last is None
        target.health = before.record(result.ok)
        target.last = result
        after = target.health
        self._damp(target, changed=after.up != before.up, now=time.monotonic() if now is None else now)
        if target.state != served:
            target.since = time.time()
            self._changed.set()
        if after.up != before.up:
            if after.up:
                log.info("%s is UP: %s (%s, rise=%d)", target.key, result.detail,
                         _count(after.successes, "successful check"), after.rise)
            else:
                # Fewer than `fall` failures only when the server was still provisionally up (start).
                how = (f"{_count(after.failures, 'failed check')}, fall={after.fall}" if after.failures >= after.fall
                       else 'failed its first check; init_state = "provisional"')
                log.warning("%s is DOWN: %s (%s)", target.key, result.detail, how)
        elif after.health != before.health and (not result.ok or not after.up or before.failures):
            # On the way from one state to the other (or back): HAProxy's "status 2/3 UP" lines.
            # Not logged: a provisionally up server's first success, which only confirms it.
            verb = "succeeded" if result.ok else "failed"
            log.info("%s check %s: %s, %s", target.key, verb, result.detail, after.status())
        if first or after.up != before.up:
            self._changed.set()

    def _damp(self, target: Target, changed: bool, now: float) -> None:
        """Flap damping (damping.py): a state change adds to the penalty; every check lets it decay."""
        spec, was = target.spec, target.damping
        target.damping = was.change(spec, now) if changed else was.tick(spec, now)
        damping = target.damping
        if damping.flapping and not was.flapping:
            log.warning("%s is FLAPPING: %s, penalty %.1f above flap_suppress %g: held down for at least %.0fs",
                        target.key, _count(damping.changes, "state change"), damping.penalty, spec.flap_suppress,
                        damping.hold_left(spec, now))
        elif was.flapping and not damping.flapping:
            log.info("%s no longer flapping (penalty %.1f below flap_reuse %g): %s", target.key,
                     damping.penalty, spec.flap_reuse, "UP" if target.health.up else "still DOWN")

    # ---- the state file

    def snapshot(self) -> HealthState:
        """The state to write: every server checked at least once (a server not in the file yet
        counts as up for the router, which matches its state here)."""
        self.generation += 1
        return HealthState(
            generation=self.generation, written_at=time.time(), checker_pid=os.getpid(),
            servers={t.key: ServerState(state=t.state, since=t.since, last_check=t.last.as_dict(),
                                        flapping=t.damping.flapping)
                     for t in self.targets.values() if t.last is not None})

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        # The first file is written on the first results (or after one heartbeat, if there are none).
        last_write = loop.time()
        while True:
            remaining = last_write + self.config.heartbeat - loop.time()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=max(remaining, 0))
            except TimeoutError:
                pass
            self._changed.clear()
            last_write = loop.time()
            await self._write(self.snapshot())

    async def _write(self, state: HealthState) -> None:
        path = self.config.state_file
        try:
            # fsync can take a while on a busy disk: keep it off the event loop, away from probe timings.
            await asyncio.to_thread(_write_file, path, state)
        except OSError as e:
            problem = f"{path}: {e.strerror or e}"
            if problem != self._write_error:
                log.error("cannot write the health state: %s (retrying every %gs)", problem, self.config.heartbeat)
            self._write_error = problem
            return
        if self._write_error is not None:
            log.info("health state %s written again (generation %d)", path, state.generation)
            self._write_error = None


def _remove_leftover_temp_files(path: Path) -> None:
    """A checker killed between creating its temp file and renaming it leaves the temp file
    behind (the state file itself is never torn). There is one checker per state file, so at start
    every such file is a leftover."""
    pattern = f"{glob.escape(health_state.temp_prefix(path))}*{health_state.TEMP_SUFFIX}"
    for leftover in path.parent.glob(pattern):
        try:
            leftover.unlink()
            log.info("removed %s, left behind by a checker that was killed while writing", leftover)
        except OSError as e:
            log.warning("cannot remove leftover %s: %s", leftover, e.strerror or e)


def _write_file(path: Path, state: HealthState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    health_state.write_atomic(path, state)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


async def serve(config: CheckerConfig, config_path: Path, status: ProcessStatus, fingerprint: str) -> None:
    checker = Checker(config, config_path, status)
    status.started(fingerprint)      # at once: its probes and the first state file follow
    await checker.run()
    status.stopped()
