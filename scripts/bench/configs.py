"""Config files for every process of the benchmark, as text: nginx (the static backend), HAProxy,
stunnel (seed 004's literal config, and tuned as a user who benchmarks it would run it), and
frontgate's tls-terminator and mux-router (as shipped, and with the access log off). Pure functions of ports and
paths, so both stacks provably get the same routes and the unit tests can read what we run.

Routes, identical on both stacks (Host header, port stripped):
  bench.localhost         -> nginx (static 1k.bin, 64k.bin)
  ws.bench.localhost      -> the WebSocket echo server
  sleepy.bench.localhost  -> the three 50 ms backends of seed 001, round robin
and, for scenario 8, mux-router's dynamic route table (frontgate/routes.py) with N routes
  r00001.bench.localhost ... rNNNNN.bench.localhost -> nginx
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from frontgate import routes

HOST_STATIC = "bench.localhost"
HOST_WS = "ws.bench.localhost"
HOST_SLEEPY = "sleepy.bench.localhost"
ROUTE_HOST = "r{:05d}.bench.localhost"     # the i-th dynamic route's host, i from 1


@dataclass(frozen=True)
class Backends:
    nginx: int                       # port of nginx on 127.0.0.1
    ws_echo: int                     # port of the WebSocket echo server
    sleepy: tuple[int, ...] = ()     # ports of the sleeping backends (scenario 6)


def nginx_conf(workdir: Path, port: int, docroot: Path, as_root: bool) -> str:
    """One worker: the backend must not take both cores from the proxies it is serving.
    Every path (pid, logs, temp) is in `workdir`, so nginx runs as root without touching /etc."""
    tmp = workdir / "nginx-tmp"
    return f"""\
# frontgate bench: static backend
{"user root;" if as_root else ""}
worker_processes 1;
worker_rlimit_nofile 20000;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
daemon off;
events {{ worker_connections 10000; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 10000000;   # the proxies' pooled connections must not be recycled mid-run
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {docroot};
    }}
}}
"""


def haproxy_cfg(port: int, backends: Backends, nbthread: int, tls_pem: Path | None = None) -> str:
    """HAProxy in HTTP mode doing the same routing as mux-router (seed 004's frontend/backends,
    reduced to what the benchmark exercises). Not logging: seed 004 sends its httplog to a syslog
    at 127.0.0.1 that nobody runs here; leaving it out can only make the reference faster.
    `tls_pem`: HAProxy terminates TLS itself with that certificate and offers HTTP/2 by ALPN
    (scenario 7's reference), instead of taking plain HTTP from stunnel."""
    tls = f" ssl crt {tls_pem} alpn h2,http/1.1" if tls_pem else ""
    sleepy = "\n".join(f"    server sleepy{i} 127.0.0.1:{p}" for i, p in enumerate(backends.sleepy, 1))
    sleepy_backend = f"""
backend sleepy
    balance roundrobin
{sleepy}
""" if backends.sleepy else ""
    sleepy_route = "    use_backend sleepy if host_sleepy\n" if backends.sleepy else ""
    return f"""\
# frontgate bench: the reference router (seed 004's HAProxy, HTTP mode{", TLS and h2 itself" if tls_pem else ""})
global
    maxconn 9000
    nbthread {nbthread}

defaults
    mode http
    option http-keep-alive
    option forwardfor
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout tunnel 3600s

frontend all
    bind 127.0.0.1:{port}{tls} backlog 4096
    acl host_static req.hdr(host),field(1,:) -i {HOST_STATIC}
    acl host_ws     req.hdr(host),field(1,:) -i {HOST_WS}
    acl host_sleepy req.hdr(host),field(1,:) -i {HOST_SLEEPY}
    use_backend ws if host_ws
{sleepy_route}    use_backend static if host_static

backend static
    balance roundrobin
    server nginx 127.0.0.1:{backends.nginx}

backend ws
    balance roundrobin
    server echo 127.0.0.1:{backends.ws_echo}
{sleepy_backend}"""


def stunnel_conf(workdir: Path, name: str, pem: Path, accept: int, connect: int, tuned: bool) -> str:
    """Seed 004's stunnel.conf (pid, cert, fips, one [https] service), with our ports and paths and
    `foreground = yes` so that we can supervise it. Seed 004 sets no TIMEOUTclose, so stunnel's
    default (60 s waiting for the peer's close_notify) applies, and logs at its default level,
    notice: a line per connection. `tuned` is how a user who benchmarks stunnel runs it (the
    reference the ratios are stated against): `TIMEOUTclose = 0`, TCP_NODELAY on the accepted
    (`l:`) and the outgoing (`r:`) socket, and `debug = warning`. stunnel(8): `debug` is a global
    option, `socket` and `TIMEOUTclose` are service options."""
    lines = [f"; frontgate bench: stunnel as in seed 004{' + tuned' if tuned else ''}",
             f"pid = {workdir}/{name}.pid",
             f"cert = {pem}",
             "fips = no",
             "foreground = yes"]
    if tuned:
        lines.append("debug = warning")
    lines += ["[https]",
              f"accept = 127.0.0.1:{accept}",
              f"connect = 127.0.0.1:{connect}"]
    if tuned:
        lines += ["TIMEOUTclose = 0", "socket = l:TCP_NODELAY=1", "socket = r:TCP_NODELAY=1"]
    return "\n".join(lines) + "\n"


def router_toml(workdir: Path, public_port: int | None, from_terminator: str | None,
                backends: Backends, workers: int | None = None, access_log_file: Path | None = None,
                routes_file: Path | None = None) -> str:
    """mux-router with the same three routes as HAProxy; no redirects (the benchmark's clients are
    all local, and HAProxy above has none either). `workers`: None is the shipped "auto".
    `access_log_file`: the shipped access log (`all`, httplog) into that file; None: the log off,
    like HAProxy's. `from_terminator`: its address (`unix:/path` or `host:port`). `routes_file`:
    the dynamic route table it follows (`[routes] file`); None: the default beside `state_file`,
    which the benchmark never writes."""
    listeners = ""
    if public_port is not None:
        listeners += f"""
[listen.public]
address = "127.0.0.1:{public_port}"
scheme = "http"
"""
    if from_terminator is not None:
        listeners += f"""
[listen.from_terminator]
address = "{from_terminator}"
proxy_protocol = true
scheme = "https"
"""
    sleepy = ""
    if backends.sleepy:
        servers = ", ".join(f'"127.0.0.1:{p}"' for p in backends.sleepy)
        sleepy = f"""
[[app]]
name = "sleepy"
hosts = ["{HOST_SLEEPY}"]
servers = [{servers}]
"""
    dynamic = f'\n[routes]\nfile = "{routes_file}"\n\n' if routes_file else "\n"
    log = ('access_log = "all"\naccess_log_format = "httplog"\n'
           f'access_log_file = "{access_log_file}"') if access_log_file else 'access_log = "off"'
    return f"""\
# frontgate bench: mux-router
[router]
workers = {workers_value(workers)}
state_file = "{workdir}/health.json"
trusted_sources = ["127.0.0.1/32", "::1/128"]
{log}
{listeners}
[timeouts]
http_request = 10
client = 60
connect = 5
server = 60
tunnel = 3600
{dynamic}[[app]]
name = "ws"
hosts = ["{HOST_WS}"]
servers = ["127.0.0.1:{backends.ws_echo}"]
{sleepy}
[[app]]
name = "static"
hosts = ["{HOST_STATIC}"]
servers = ["127.0.0.1:{backends.nginx}"]
"""


def route_host(i: int) -> str:
    return ROUTE_HOST.format(i)


def route_table(count: int, nginx_port: int) -> routes.RouteTable:
    """`count` dynamic routes, r00001.bench.localhost ... (route_host), each to nginx, as if added
    one by one with `frontgate route add` (route i at version i): frontgate's own route model, so
    the router reads what the CLI would have written."""
    server = f"127.0.0.1:{nginx_port}"
    return routes.table_of((routes.make_route(route_host(i), [server], owner="bench", revision=i)
                            for i in range(1, count + 1)), version=count)


def terminator_toml(pem: Path, listen_port: int, forward_to: str, workers: int | None = None) -> str:
    """`workers`: None is the shipped "auto"."""
    return f"""\
# frontgate bench: tls-terminator
[terminator]
listen = "127.0.0.1:{listen_port}"
forward_to = "{forward_to}"
workers = {workers_value(workers)}
handshake_timeout = 10
idle_timeout = 3600
max_connections = 20000

[[certificate]]
cert = "{pem}"
"""


def workers_value(workers: int | None) -> str:
    """A `workers` setting as TOML: a number, or None for the shipped \"auto\"."""
    return '"auto"' if workers is None else str(workers)
