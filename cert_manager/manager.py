"""The cert-manager loop: for each configured name, when its time comes (schedule.py), one ACME
order (acme_flow.py, in a thread: the library blocks), then the certificate into certs_dir.

One order at a time, the earliest due first. A failure leaves the certificate in use alone, counts,
and pushes that name's next attempt back (exponential, honouring the CA's Retry-After); the
session is made anew for the next attempt. No names: it idles until a SIGHUP brings some.
SIGHUP re-reads the config (a bad one keeps the old); SIGTERM stops after the order in progress.

In a fleet (the router's route store is Redis: cert_manager.fleet), a name is ordered only under
its lock in Redis; a node that finds it taken looks again later, and gets the certificate from the
follower (fleet_follow.py) meanwhile. The holder first installs a certificate another node may
have published since, and publishes the one it orders.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import random
import signal
import time
from pathlib import Path

from cert_manager import files, schedule
from cert_manager.acme_flow import Session, TokenDir, describe
from cert_manager.fleet import Fleet, FleetTokens
from cert_manager.fleet_follow import FleetFollower
from cert_manager.fleet_rules import LOCK_EXTEND_EVERY, LOCK_TTL, recheck_after
from cert_manager.stats import CertManagerAdmin, Counters
from frontgate import acme_state
from frontgate.acme_state import NameState
from frontgate.config import ConfigError
from frontgate.config.cert_manager import CertManagerConfig, load_cert_manager_config
from frontgate.process_status import ProcessStatus
from frontgate.route_store_redis import ERRORS

log = logging.getLogger("cert-manager")

MAX_SLEEP = 3600.0           # re-check at least this often (a certificate replaced by hand, the clock)


def _iso(ts: float | None) -> str:
    return "-" if ts is None else datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="seconds")


class Manager:
    def __init__(self, cfg: CertManagerConfig, config_path: Path, status: ProcessStatus, fingerprint: str = "",
                 clock=time.time):
        self.cfg = cfg
        self.config_path = config_path
        self.status = status            # what `frontgate reload` and `status` read
        self.fingerprint = fingerprint  # of the config it was started with
        self.clock = clock
        self.states: dict[str, NameState] = {}
        self.windows: dict[str, tuple[float, float]] = {}     # the CA's renewal windows (ARI)
        self.planned_from: dict[str, str] = {}    # name -> fingerprint of the certificate its plan is from
        self.session: Session | None = None
        self.fleet: Fleet | None = None
        self.follower: FleetFollower | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.counters = Counters()
        self.admin = CertManagerAdmin(self)
        self._wake = asyncio.Event()
        self._stopping = False

    # ---- lifecycle

    async def run(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        self._apply(self.cfg)
        await self.admin.start()
        self.status.started(self.fingerprint)
        log.info("started: %d name(s) from %s, directory %s, certificates into %s",
                 len(self.states), self.config_path, self.cfg.directory_url, self.cfg.certs_dir)
        try:
            while not self._stopping:
                name, due = self._earliest()
                wait = MAX_SLEEP if name is None else min(MAX_SLEEP, due - self.clock())
                if wait > 0:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), wait)
                    except TimeoutError:
                        pass
                    continue
                await self.attempt(name)
        finally:
            if self.follower is not None:
                self.follower.stop()
            await self.admin.stop()
            self.status.stopped()
            log.info("stopped")

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def reload(self) -> None:
        fingerprint = self.status.config_on_disk()
        try:
            cfg = load_cert_manager_config(self.config_path)
        except ConfigError as e:
            log.error("reload failed, keeping the running config: %s", e)
            self.status.reloaded(error=f"keeping the running config: {e}")
            return
        self.session = None         # the directory, account or trust may have changed
        self._apply(cfg)
        self.status.reloaded(fingerprint)
        log.info("reloaded %s: %d name(s)", self.config_path, len(self.states))
        self._wake.set()

    def _apply(self, cfg: CertManagerConfig) -> None:
        self.cfg = cfg
        self.admin.admin = cfg.admin if self.admin.server is None else self.admin.admin
        for d in (cfg.certs_dir, cfg.challenge_dir, cfg.state_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._follow(cfg)
        states = {}
        now = self.clock()
        for name in cfg.names:
            state = self.states.get(name) or acme_state.load(cfg.state_dir, name)
            self._plan(state, now)
            states[name] = state
        self.states = states

    def _follow(self, cfg: CertManagerConfig) -> None:
        """A follower for the fleet's Redis while the config names one (a new one if it changed)."""
        if self.fleet is not None and self.fleet.routes == cfg.fleet:
            return
        if self.follower is not None:
            self.follower.stop()
        self.fleet = self.follower = None
        if cfg.fleet is not None:
            self.fleet = Fleet(cfg.fleet)
            self.follower = FleetFollower(self.fleet, lambda: self.cfg, self._installed_elsewhere)
            self.follower.start()
            log.info("fleet: following %s", self.fleet.describe())

    def _installed_elsewhere(self, name: str) -> None:
        """From the follower's thread: the name's certificate came from the fleet."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._adopted, name)

    def _adopted(self, name: str) -> bool:
        """Plan from the name's certificate if the fleet brought a new one since the last plan;
        whether it did (the follower and an order's own check may both report the same one)."""
        state = self.states.get(name)
        cert = files.in_use(self.cfg.certs_dir, name)
        if state is None or cert is None or not cert.covers or cert.fingerprint == self.planned_from.get(name):
            return False
        now = self.clock()
        Counters.bump(self.counters.from_fleet, name)
        state.succeeded(now, cert.not_after)
        self._plan(state, now)
        log.info("%s: certificate from the fleet installed, valid until %s; next renewal %s", name,
                 _iso(cert.not_after), _iso(state.next_attempt))
        self._wake.set()
        return True

    # ---- one name

    def _earliest(self) -> tuple[str | None, float]:
        if not self.states:
            return None, 0.0
        state = min(self.states.values(), key=lambda s: s.next_attempt or 0.0)
        return state.name, state.next_attempt or 0.0

    def _plan(self, state: NameState, now: float) -> None:
        """Work out (and write down) when to try next for the name."""
        cert = files.in_use(self.cfg.certs_dir, state.name)
        have = cert is not None and cert.covers
        state.not_after = cert.not_after if cert is not None else None
        self.planned_from[state.name] = cert.fingerprint if cert is not None else ""
        state.next_attempt = schedule.next_attempt(
            now=now, not_before=cert.not_before if have else None, not_after=cert.not_after if have else None,
            failures=state.failures, last_failure=state.last_error_at, retry_after=state.retry_after,
            retry_min=self.cfg.retry_min, retry_max=self.cfg.retry_max, jitter=random.random(),
            window=self.windows.get(state.name))
        if schedule.expiry_warning(now, state.not_after, self.cfg.expiry_warning_days) and state.failures:
            log.warning("%s: the certificate in use expires %s and renewal has failed %d time(s) in a row "
                        "(last: %s)", state.name, _iso(state.not_after), state.failures, state.last_error)
        self._save(state)

    def _save(self, state: NameState) -> None:
        try:
            acme_state.save(self.cfg.state_dir, state)
        except OSError as e:
            log.warning("%s: cannot write its state file: %s", state.name, e.strerror or e)

    async def attempt(self, name: str) -> bool:
        if self.fleet is None:
            return await self._order(name, TokenDir(self.cfg.challenge_dir))
        return await self._fleet_attempt(self.fleet, name)

    async def _fleet_attempt(self, fleet: Fleet, name: str) -> bool:
        """Order under the name's lock, unless another node holds it or has published a
        certificate that is not due yet."""
        state = self.states[name]
        lock = fleet.lock(name)
        try:
            if not await asyncio.to_thread(fleet.try_lock, lock):
                holder, left = await asyncio.to_thread(fleet.holder, name)
                state.next_attempt = self.clock() + recheck_after(left)
                self._save(state)
                log.info("%s: node %s is ordering it; looking again at %s", name, holder, _iso(state.next_attempt))
                return False
        except ERRORS as e:
            return self._failed(name, f"redis: {e}", None)
        keeping = asyncio.create_task(self._keep(lock))
        try:
            try:
                await asyncio.to_thread(fleet.adopt, name, self.cfg.certs_dir, self.clock())
            except (ValueError, *ERRORS) as e:
                log.warning("%s: the fleet's certificate could not be installed (%s); ordering", name, e)
            if self._adopted(name):     # another node's order ended meanwhile (adopted now or by the follower)
                return True
            return await self._order(name, FleetTokens(fleet, self.cfg.order_timeout), fleet=fleet)
        finally:
            keeping.cancel()
            try:
                await asyncio.to_thread(fleet.unlock, lock)
            except ERRORS as e:
                log.warning("%s: the lock could not be released (it expires within %gs): %s", name, LOCK_TTL, e)

    async def _keep(self, lock) -> None:
        """Extend the lock while the order runs, so no other node starts one meanwhile."""
        while True:
            await asyncio.sleep(LOCK_EXTEND_EVERY)
            try:
                await asyncio.to_thread(lock.extend, LOCK_TTL, True)
            except ERRORS as e:
                log.warning("the lock %s could not be extended: %s", lock.name, e)
                return

    def _failed(self, name: str, error: str, retry_after: float | None) -> bool:
        state, now = self.states[name], self.clock()
        state.failed(error, now, retry_after)
        Counters.bump(self.counters.failures, name)
        self._plan(state, now)
        log.warning("%s: order failed (%d in a row): %s; the certificate in use stays; next attempt %s",
                    name, state.failures, state.last_error, _iso(state.next_attempt))
        return False

    async def _order(self, name: str, tokens, fleet: Fleet | None = None) -> bool:
        state = self.states[name]
        before = files.in_use(self.cfg.certs_dir, name)
        self.counters.in_progress = 1
        session = self.session
        try:
            if session is None:
                session = Session(self.cfg)
                await asyncio.to_thread(session.connect)
                self.session = session
            session.net.last_retry_after = None
            nonces = session.net.bad_nonces
            try:
                issued = await asyncio.to_thread(session.issue, name, tokens)
            finally:
                self.counters.bad_nonces += session.net.bad_nonces - nonces
            if fleet is None:
                installed = files.install(self.cfg.certs_dir, name, issued.fullchain_pem, issued.key)
            else:
                installed = await asyncio.to_thread(fleet.install, self.cfg.certs_dir, name, issued.fullchain_pem,
                                                    issued.key)
        except Exception as e:       # every failure (network, CA, files) is the same to the schedule
            retry_after = schedule.parse_retry_after(session.net.last_retry_after if session else None, self.clock())
            self.session = None
            return self._failed(name, describe(e), retry_after)
        finally:
            self.counters.in_progress = 0
        if fleet is not None:
            try:
                await asyncio.to_thread(fleet.publish, name, files.bundle(issued.fullchain_pem, issued.key),
                                        installed)
            except ERRORS as e:     # installed here; the other nodes order for themselves when due
                log.warning("%s: the certificate could not be published to the fleet: %s", name, e)
        now = self.clock()
        Counters.bump(self.counters.renewed if before is not None and before.covers else self.counters.issued, name)
        state.succeeded(now, installed.not_after)
        window = await self._renewal_window(session, name, issued.fullchain_pem)
        if window is not None:
            self.windows[name] = window
        else:
            self.windows.pop(name, None)
        self._plan(state, now)
        log.info("%s: certificate %s, valid until %s, into %s; next renewal %s", name,
                 "renewed" if before is not None and before.covers else "issued", _iso(installed.not_after),
                 acme_state.certificate_path(self.cfg.certs_dir, name), _iso(state.next_attempt))
        return True

    async def _renewal_window(self, session: Session, name: str, fullchain_pem: bytes) -> tuple[float, float] | None:
        try:
            return await asyncio.to_thread(session.renewal_window, fullchain_pem)
        except Exception as e:      # no renewal information: the third-of-the-lifetime rule
            log.info("%s: no renewal information from the CA (%s)", name, describe(e))
            return None


async def serve(cfg: CertManagerConfig, config_path: Path, status: ProcessStatus, fingerprint: str) -> None:
    await Manager(cfg, config_path, status, fingerprint).run()
