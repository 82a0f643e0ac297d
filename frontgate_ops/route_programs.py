"""The supervisord programs [routes] in mux-router.toml asks for, rendered into supervisord.conf
(`${route_programs}` in supervisord.conf.in): `route-sync` with a Redis store (keeps this node's
table file in line with the fleet's), `route-broker` with [routes.self_service]. The file store
needs neither: `make deploy` runs nothing new."""
from __future__ import annotations

from frontgate.config.routes import RoutesConfig

PROGRAM = """
[program:{name}]
command = %(here)s/.venv/bin/frontgate route {command}
directory = %(here)s
priority = 150
autorestart = true
startsecs = 1
startretries = 5
stopsignal = TERM
stopwaitsecs = 5
stopasgroup = true
killasgroup = true
redirect_stderr = true
stdout_logfile = %(here)s/logs/{name}.log
stdout_logfile_maxbytes = 10MB
stdout_logfile_backups = 3
"""


def render(routes: RoutesConfig | None) -> str:
    if routes is None:
        return ""
    programs = []
    if routes.shared:
        programs.append(PROGRAM.format(name="route-sync", command="sync"))
    if routes.self_service is not None:
        programs.append(PROGRAM.format(name="route-broker", command="broker"))
    return "".join(programs)
