"""The cert-manager loop: for each configured name, when its time comes (schedule.py), one ACME
order (acme_flow.py, in a thread: the library blocks), then the certificate into certs_dir.

One order at a time, the earliest due first. A failure leaves the certificate in use alone, counts,
and pushes that name's next attempt back (exponential, honouring the CA's Retry-After); the
session is made anew for the next attempt. No names: it idles until a SIGHUP brings some.
SIGHUP re-reads the config (a bad one keeps the old); SIGTERM stops after the order in progress.
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
from cert_manager.acme_flow import Session, describe
from cert_manager.stats import CertManagerAdmin, Counters
from frontgate import acme_state
from frontgate.acme_state import NameState
from frontgate.config.cert_manager import CertManagerConfig, load_cert_manager_config
from frontgate.config import ConfigError
from frontgate.process_status import ProcessStatus

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
        self.session: Session | None = None
        self.counters = Counters()
        self.admin = CertManagerAdmin(self)
        self._wake = asyncio.Event()
        self._stopping = False

    # ---- lifecycle

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
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
        states = {}
        now = self.clock()
        for name in cfg.names:
            state = self.states.get(name) or acme_state.load(cfg.state_dir, name)
            self._plan(state, now)
            states[name] = state
        self.states = states

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
        state.next_attempt = schedule.next_attempt(
            now=now, not_before=cert.not_before if have else None, not_after=cert.not_after if have else None,
            failures=state.failures, last_failure=state.last_error_at, retry_after=state.retry_after,
            retry_min=self.cfg.retry_min, retry_max=self.cfg.retry_max, jitter=random.random(),
            window=self.windows.get(state.name))
        if schedule.expiry_warning(now, state.not_after, self.cfg.expiry_warning_days) and state.failures:
            log.warning("%s: the certificate in use expires %s and renewal has failed %d time(s) in a row "
                        "(last: %s)", state.name, _iso(state.not_after), state.failures, state.last_error)
        try:
            acme_state.save(self.cfg.state_dir, state)
        except OSError as e:
            log.warning("%s: cannot write its state file: %s", state.name, e.strerror or e)

    async def attempt(self, name: str) -> bool:
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
                issued = await asyncio.to_thread(session.issue, name)
            finally:
                self.counters.bad_nonces += session.net.bad_nonces - nonces
            installed = files.install(self.cfg.certs_dir, name, issued.fullchain_pem, issued.key)
        except Exception as e:       # every failure (network, CA, files) is the same to the schedule
            now = self.clock()
            retry_after = schedule.parse_retry_after(session.net.last_retry_after if session else None, now)
            self.session = None
            state.failed(describe(e), now, retry_after)
            Counters.bump(self.counters.failures, name)
            self._plan(state, now)
            log.warning("%s: order failed (%d in a row): %s; the certificate in use stays; next attempt %s",
                        name, state.failures, state.last_error, _iso(state.next_attempt))
            return False
        finally:
            self.counters.in_progress = 0
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
