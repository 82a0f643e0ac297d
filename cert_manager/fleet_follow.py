"""Each node's cert-manager follows the fleet's Redis (frontgate.redis_follow: hint, poll, resync
on reconnect, as `frontgate route sync` does), in a thread:

- the challenge directory holds exactly the tokens of the fleet's hash, so this node's router
  answers the CA whichever node ordered (fleet_rules.token_changes);
- each configured name's certificate in Redis is installed into certs_dir when it is newer than
  the one in use (Fleet.adopt), and the daemon told (`installed`), to plan the next renewal from it;
- this node's record says which tokens its router has: the node that orders waits for every live
  node's before it asks the CA to validate.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from cert_manager import files
from cert_manager.fleet import Fleet
from cert_manager.fleet_rules import token_changes
from frontgate.config.cert_manager import CertManagerConfig
from frontgate.redis_follow import Follower, record_ttl

log = logging.getLogger("cert-manager")


class FleetFollower(Follower):
    def __init__(self, fleet: Fleet, config: Callable[[], CertManagerConfig], installed: Callable[[str], None]):
        super().__init__(fleet.client, fleet.keys.channel, fleet.routes.poll_interval, log)
        self.fleet, self.config, self.installed = fleet, config, installed
        self.seen = -1                     # the version of the last resync
        self.seen_names: tuple[str, ...] = ()   # and the names it installed for (a reload may add some)
        self.damaged: dict[str, str] = {}  # name -> the problem logged (once) with its entry in Redis
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, args=(self._stop,), name="fleet-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def resync(self) -> None:
        version = self.fleet.version()        # before reading: a change made meanwhile comes round again
        cfg = self.config()
        self._mirror_tokens(cfg)
        for name in cfg.names:
            self._adopt(cfg, name)
        self.seen, self.seen_names = version, cfg.names

    def _mirror_tokens(self, cfg: CertManagerConfig) -> None:
        write, remove = token_changes(self.fleet.tokens(), files.tokens_present(cfg.challenge_dir))
        for token, key_authorization in write.items():
            files.put_token(cfg.challenge_dir, token, key_authorization)
        for token in remove:
            files.remove_token(cfg.challenge_dir / token)

    def _adopt(self, cfg: CertManagerConfig, name: str) -> None:
        try:
            cert = self.fleet.adopt(name, cfg.certs_dir, time.time())
        except (ValueError, OSError) as e:
            if self.damaged.get(name) != str(e):
                log.error("%s: the fleet's certificate is not installed: %s", name, e)
            self.damaged[name] = str(e)
            return
        self.damaged.pop(name, None)
        if cert is not None:
            self.installed(name)

    def behind(self) -> bool:
        return self.fleet.version() != self.seen or self.config().names != self.seen_names

    def report(self) -> None:
        cfg = self.config()
        certs = {name: cert.fingerprint for name in cfg.names if (cert := files.in_use(cfg.certs_dir, name))}
        self.fleet.record_node(list(files.tokens_present(cfg.challenge_dir)), certs,
                               record_ttl(self.poll_interval))

    def holding(self) -> str:
        return "the certificates in use stay; no orders until it is back"
