"""Each app's state as the running health checker sees it: what `make deploy` waits for and prints
(`frontgate health --wait`), so that it returns when the first request would be answered, or says
plainly which app would not be.

A server is "settled" once the running checker has checked it and its state agrees with its last
check: up and passing, or down. A server that is up but failed its last check is not: with
init_state = "fully-up" it keeps its traffic until `fall` checks fail, which is right for an app
still starting, but it does not answer yet. Pure: the caller reads the state file and supervisord.
"""
from __future__ import annotations

from dataclasses import dataclass

from frontgate.config import RouterConfig
from frontgate.health_state import HealthState


@dataclass(frozen=True)
class ServerHealth:
    address: str
    state: str                 # "up" | "down" | "unchecked" (not by the running checker yet)
    passing: bool = False      # its last check succeeded
    detail: str = ""

    @property
    def settled(self) -> bool:
        return self.state == "down" or (self.state == "up" and self.passing)

    @property
    def answering(self) -> bool:
        return self.state == "up" and self.passing

    def describe(self) -> str:
        if self.state == "unchecked":
            return f"{self.address} not checked yet"
        if self.state == "up" and not self.passing:
            return f"{self.address} up, but its last check failed ({self.detail}): it goes down if it keeps failing"
        return f"{self.address} {self.state} ({self.detail})"


def app_health(router: RouterConfig, state: HealthState | None, checker_pid: int | None) -> dict[str, list[ServerHealth]]:
    """Every app's servers, as checked by the checker with `checker_pid` (a state file written by an
    earlier checker says nothing about now)."""
    current = state is not None and checker_pid is not None and state.checker_pid == checker_pid
    out = {}
    for app in router.apps:
        servers = []
        for server in app.servers:
            s = state.servers.get(app.server_key(server)) if current else None
            servers.append(ServerHealth(str(server.address), "unchecked") if s is None else
                           ServerHealth(str(server.address), s.state, bool(s.last_check.get("ok")),
                                        str(s.last_check.get("detail", ""))))
        out[app.name] = servers
    return out


def settled(apps: dict[str, list[ServerHealth]]) -> bool:
    return all(s.settled for servers in apps.values() for s in servers)


def report(apps: dict[str, list[ServerHealth]]) -> tuple[list[str], list[str]]:
    """(a line per app, the apps no server of which answers)."""
    lines, failed = [], []
    for name, servers in apps.items():
        answering = [s for s in servers if s.answering]
        if answering:
            lines.append(f"{name}: up ({len(answering)} of {len(servers)} servers answer their checks"
                         + "".join(f"; {s.describe()}" for s in servers if not s.answering) + ")")
        else:
            failed.append(name)
            lines.append(f"{name}: DOWN, no server answers, its requests fail: " + "; ".join(s.describe() for s in servers))
    return lines, failed
