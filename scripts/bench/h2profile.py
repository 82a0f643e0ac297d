"""Where the router's time goes for HTTP/2: nginx (1k.bin) <- mux-router <- tls-terminator <- one
bounded h2load run (`-n N -c 4 -m 32`, every URI its own query, as scenario 7). Prints the router's
CPU µs per request (utime+stime from /proc over the run), the backend connections nginx saw
(distinct $connection serials in its access log), and with --profile the router's own cProfile
(timer: process CPU time) top entries by tottime and cumulative time.

    .venv/bin/python -m scripts.bench.h2profile [-n 20000] [--profile]
"""
from __future__ import annotations

import argparse
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.bench import certs, configs
from scripts.bench.configs import Backends
from scripts.bench.scenarios import h2load_uris
from tests.helpers import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# Run as the router's main module under cProfile: its timer is the process's CPU time, so the
# event loop's waits do not count.
PROFILED_ROUTER = """\
import cProfile, signal, sys, time
from mux_router.__main__ import main
prof = cProfile.Profile(time.process_time)
out = sys.argv[2]
sys.argv = ["mux-router", "--config", sys.argv[1]]
prof.enable()
try:
    main()
finally:
    prof.disable()
    prof.dump_stats(out)
"""


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])        # utime + stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20000, help="requests (h2load -n)")
    ap.add_argument("--profile", action="store_true", help="run the router under cProfile")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="h2profile-"))
    docroot = work / "www"
    docroot.mkdir()
    (docroot / "1k.bin").write_bytes(b"x" * 1024)
    (work / "nginx-tmp").mkdir()
    nginx_port, router_port, tls_port = free_port(), free_port(), free_port()
    conf = configs.nginx_conf(work, nginx_port, docroot, as_root=os.geteuid() == 0)
    conf = conf.replace("access_log off;", "log_format conn '$connection';\n"
                        f"    access_log {work}/nginx-access.log conn;")
    (work / "nginx.conf").write_text(conf)
    backends = Backends(nginx=nginx_port, ws_echo=free_port())
    (work / "mux-router.toml").write_text(configs.router_toml(work, None, f"127.0.0.1:{router_port}", backends,
                                                               workers=1))
    pem = certs.make_pem("ecdsa", work / "site.pem")
    (work / "tls-terminator.toml").write_text(configs.terminator_toml(pem, tls_port, f"127.0.0.1:{router_port}",
                                                                       workers=1))
    (work / "uris.txt").write_text(h2load_uris(tls_port, args.n))
    profile = work / "router.prof"
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(["nginx", "-c", str(work / "nginx.conf"), "-e", str(work / "nginx-error.log")],
                                      stderr=subprocess.DEVNULL))
        wait_for_port("127.0.0.1", nginx_port)
        if args.profile:
            router_argv = [str(BIN / "python"), "-c", PROFILED_ROUTER, str(work / "mux-router.toml"), str(profile)]
        else:
            router_argv = [str(BIN / "mux-router"), "--config", str(work / "mux-router.toml")]
        router = subprocess.Popen(router_argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=work.joinpath("router.err").open("w"))
        procs.append(router)
        wait_for_port("127.0.0.1", router_port)
        procs.append(subprocess.Popen([str(BIN / "tls-terminator"), "--config", str(work / "tls-terminator.toml")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for_port("127.0.0.1", tls_port)
        before, started = cpu_ticks(router.pid), time.monotonic()
        out = subprocess.run(["h2load", "-n", str(args.n), "-c", "4", "-m", "32", f"--connect-to=127.0.0.1:{tls_port}",
                              "-i", str(work / "uris.txt")], capture_output=True, text=True, timeout=300).stdout
        ticks, wall = cpu_ticks(router.pid) - before, time.monotonic() - started
        summary = [line for line in out.splitlines() if line.startswith(("finished in", "requests:", "status codes:"))]
        print("\n".join(summary))
        print(f"router CPU: {ticks / os.sysconf('SC_CLK_TCK'):.2f} s over {wall:.2f} s, "
              f"{ticks / os.sysconf('SC_CLK_TCK') / args.n * 1e6:.0f} µs/request")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    log = work / "nginx-access.log"
    if log.exists():
        serials = log.read_text().split()
        print(f"backend: {len(serials)} requests on {len(set(serials))} connections")
    if args.profile and profile.exists():
        stats = pstats.Stats(str(profile))
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
