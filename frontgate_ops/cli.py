"""`frontgate`: the operator's command line.

    frontgate check [--configs DIR]      validate the three TOML files (and the certificates they name)
    frontgate reload                     check, then SIGHUP the stages whose config changed since the
                                         last deploy/reload (nothing is signalled if any config is invalid)
    frontgate restart STAGE              rolling restart: the stage's processes one at a time
    frontgate status [--json]            processes, server health, certificate expiry
    frontgate explain URL [--from IP] [--sni NAME] [--header 'K: V']... [--json]
                                         a dry run of one request through the three configs
    frontgate health [--wait S]          each app's state from the running checker (make deploy waits on it)
    frontgate certs [--json]             the certificates the terminator loads: names, issuer, key, expiry
    frontgate supervisord-conf           write supervisord.conf from supervisord.conf.in and the TOMLs
    frontgate deployed changed|record    the config fingerprints (used by scripts/deploy.sh)

Run from the checkout (the Makefile does): the defaults are configs/, supervisord.conf, run/deployed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from frontgate.config.cert_manager import load_cert_manager_config
from frontgate.config import (
    Address,
    ConfigError,
    load_checker_config,
    load_router_config,
    load_terminator_config,
)
from frontgate.daemon import EXIT_CONFIG_ERROR
from frontgate.process_status import read_status, status_path
from frontgate_ops import route_cli
from frontgate_ops.deploy import (
    STAGES,
    Deployed,
    Process,
    Supervisor,
    SupervisorError,
    one_worker_note,
    render_supervisord_conf,
    rolling_restart,
    stage_processes,
    wait_listening,
    write_supervisord_conf,
)

EXIT_FAILED = 1
RELOAD_CONFIRM_SECONDS = 10.0     # how long `reload` waits for each process to record the outcome
START_CONFIRM_SECONDS = 10.0      # how long `restart` waits for a new process to record that it serves


def check_configs(configs: Path, warnings: list[str] | None = None) -> list[str]:
    """Every problem in the three configs, one line each; empty when all is well. Things that
    work but will bite (an app host no certificate covers, one expiring soon) go to `warnings`."""
    errors: list[str] = []
    terminator = router = checker = None
    try:
        terminator = load_terminator_config(configs / "tls-terminator.toml")
    except ConfigError as e:
        errors.append(str(e))
    else:
        # Import here: the certificate code pulls in pyOpenSSL, which the other checks don't need.
        from tls_terminator.cert_report import check_certificates
        errors.extend(check_certificates(terminator))
    try:
        router = load_router_config(configs / "mux-router.toml")
    except ConfigError as e:
        errors.append(str(e))
    try:
        checker = load_checker_config(configs / "health-checker.toml")
    except ConfigError as e:
        errors.append(str(e))
    if (configs / "cert-manager.toml").exists():        # a checkout from before cert-manager has none
        try:
            load_cert_manager_config(configs / "cert-manager.toml")
        except ConfigError as e:
            errors.append(str(e))
    # What takes two files to be wrong (frontgate_ops may import the daemons; the core may not).
    from frontgate_ops.cross_check import cross_check
    found = cross_check(terminator, router, checker)
    if warnings is not None:
        warnings.extend(found.warnings)
    return errors + found.errors


def _report_config_errors(configs: Path) -> bool:
    warnings: list[str] = []
    errors = check_configs(configs, warnings)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    return not errors


def cmd_check(args: argparse.Namespace) -> int:
    if not _report_config_errors(args.configs):
        return EXIT_CONFIG_ERROR
    print(f"ok: {', '.join(f'{s}.toml' for s in STAGES)} in {args.configs} are valid")
    return 0


# --------------------------------------------------------------------------- reload

def _reloads(status_dir: Path, p: Process) -> int:
    record = read_status(status_dir, p.name, p.pid)
    return record["reloads"] if record else 0


def _reload_outcome(status_dir: Path, procs: list[Process], before: dict[str, int]) -> dict[str, str]:
    """Each daemon records the outcome of a SIGHUP in its status file (frontgate.process_status);
    wait (bounded) for that from every process, so the operator learns about a refused reload now,
    not later. A file, not the log: under load the access lines would drown a log line."""
    outcome: dict[str, str] = {}
    deadline = time.monotonic() + RELOAD_CONFIRM_SECONDS
    while len(outcome) < len(procs) and time.monotonic() < deadline:
        time.sleep(0.05)
        for p in (p for p in procs if p.namespec not in outcome):
            record = read_status(status_dir, p.name, p.pid)
            if record and record["reloads"] > before[p.namespec]:
                last = record["last"]
                outcome[p.namespec] = "ok" if last["outcome"] == "ok" else f"failed: {last['message']}"
    return outcome


def cmd_reload(args: argparse.Namespace) -> int:
    if not _report_config_errors(args.configs):
        print("nothing reloaded: fix the configs first", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    deployed = Deployed(args.deployed)
    changed = deployed.changed(args.configs)
    try:
        sup = Supervisor(args.supervisord_conf)
        signalled: dict[str, tuple[list[Process], dict[str, int]]] = {}
        for stage in STAGES:
            if stage not in changed:
                print(f"{stage}: unchanged")
                continue
            procs = [p for p in sup.processes(stage) if p.state == "RUNNING"]
            before = {p.namespec: _reloads(args.status_dir, p) for p in procs}
            sup.signal(stage, "HUP")
            signalled[stage] = (procs, before)
    except SupervisorError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    status = 0
    for stage, (procs, before) in signalled.items():
        outcome = _reload_outcome(args.status_dir, procs, before)
        failed = {name: o for name, o in outcome.items() if o != "ok"}
        silent = [p.namespec for p in procs if p.namespec not in outcome]
        if failed or silent:
            status = EXIT_FAILED
            for name, o in failed.items():
                print(f"error: {name}: reload {o}", file=sys.stderr)
            for name in silent:
                print(f"error: {name}: no reload outcome in {args.status_dir} within {RELOAD_CONFIRM_SECONDS:g}s",
                      file=sys.stderr)
            continue    # not recorded: the next reload tries again
        deployed.record(stage, args.configs)
        print(f"{stage}: config changed, reloaded (SIGHUP to {len(procs)} process{'es' if len(procs) > 1 else ''})")
    template = args.supervisord_conf.with_name(args.supervisord_conf.name + ".in")
    if template.exists() and args.supervisord_conf.exists():
        wanted = render_supervisord_conf(template.read_text(), template.name, stage_processes(args.configs))
        if wanted != args.supervisord_conf.read_text():
            print("note: `workers` or `grace` (or supervisord.conf.in) changed; a reload cannot change supervisord's "
                  "processes or stopwaitsecs: `make deploy` applies it (supervisord restarts that stage)")
    return status


# --------------------------------------------------------------------------- restart, status, conf

def _listeners(stage: str, configs: Path) -> tuple[list[Address], list[Address]]:
    """A stage's client-facing listeners: (those of its own processes, closed while one restarts;
    the shared unix one of the router, which supervisord binds and holds across restarts)."""
    if stage == "mux-router":
        listeners = [l.address for l in load_router_config(configs / "mux-router.toml").listeners]
        return [a for a in listeners if not a.is_unix], [a for a in listeners if a.is_unix]
    if stage == "tls-terminator":
        return [load_terminator_config(configs / "tls-terminator.toml", require_files=False).listen], []
    return [], []


def cmd_restart(args: argparse.Namespace) -> int:
    try:
        own, held = _listeners(args.stage, args.configs)
        tcp = sum(not a.is_unix for a in own)       # a fresh process must have these before it serves
        sup = Supervisor(args.supervisord_conf)
        def ready(p: Process) -> None:
            wait_listening(p.pid, tcp)
            _wait_started(args.status_dir, p)
        rolling_restart(sup, args.stage, ready=ready, alone=one_worker_note([str(a) for a in own], [str(a) for a in held]))
    except (SupervisorError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _wait_started(status_dir: Path, p: Process) -> None:
    """Until the new process has recorded that it serves (after binding, with its config loaded)."""
    deadline = time.monotonic() + START_CONFIRM_SECONDS
    while read_status(status_dir, p.name, p.pid) is None:
        if time.monotonic() > deadline:
            raise SupervisorError(f"{p.namespec} (pid {p.pid}): not serving after {START_CONFIRM_SECONDS:g}s "
                                  f"(no {status_path(status_dir, p.name, p.pid)})")
        time.sleep(0.05)


def cmd_status(args: argparse.Namespace) -> int:
    from frontgate_ops.status import format_status, gather, healthy
    facts = gather(args.configs, args.supervisord_conf, args.status_dir)
    print(json.dumps(facts, indent=2) if args.json else format_status(facts))
    return 0 if healthy(facts) else EXIT_FAILED


def cmd_health(args: argparse.Namespace) -> int:
    """Each app's state from the running checker; with --wait, first wait (bounded) until it has
    checked every server and each one's state agrees with its last check."""
    from frontgate import app_health, health_state
    try:
        router = load_router_config(args.configs / "mux-router.toml")
        checker = [p for p in Supervisor(args.supervisord_conf).processes("health-checker") if p.state == "RUNNING"]
    except (ConfigError, SupervisorError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    if not checker:
        print("error: health-checker is not running: no app's state is known", file=sys.stderr)
        return EXIT_FAILED
    deadline = time.monotonic() + args.wait
    while True:
        try:
            state = health_state.read(router.state_file)
        except (OSError, health_state.HealthStateError):
            state = None
        apps = app_health.app_health(router, state, checker[0].pid)
        if app_health.settled(apps) or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    lines, failed = app_health.report(apps)
    for line in lines:
        print(line)
    for name in failed:
        print(f"error: app {name}: no server up", file=sys.stderr)
    return EXIT_FAILED if failed else 0


def cmd_explain(args: argparse.Namespace) -> int:
    from frontgate_ops.explain import (
        ExplainError,
        Question,
        explain,
        format_explanation,
        parse_header,
    )
    try:
        q = Question(url=args.url, client_ip=args.client_ip, sni=args.sni, method=args.method,
                     headers=tuple(parse_header(h) for h in args.header), listener=args.listener,
                     client_cert=args.client_cert)
        out = explain(args.configs, q)
    except ExplainError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(out, indent=2) if args.json else format_explanation(out))
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    from frontgate_ops import acme_report
    from frontgate_ops.status import certificate_facts
    from tls_terminator.cert_report import format_certificates
    rows = certificate_facts(args.configs)
    acme = acme_report.facts(args.configs)
    if args.json:
        print(json.dumps(rows + acme_report.certificate_rows(acme, rows), indent=2))
    else:
        print("\n".join([format_certificates(rows), ""] + acme_report.format_facts(acme, time.time())).rstrip())
    return EXIT_FAILED if any("error" in r for r in rows) else 0


def cmd_supervisord_conf(args: argparse.Namespace) -> int:
    try:
        changed, counts = write_supervisord_conf(args.template, args.supervisord_conf, args.configs)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    how = ", ".join(f"{name} {n} worker{'s' if n > 1 else ''}" for name, n in counts.items())
    print(f"{args.supervisord_conf}: {'written' if changed else 'unchanged'} ({how})")
    return 0


def cmd_deployed(args: argparse.Namespace) -> int:
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        print(f"error: unknown stage {unknown[0]!r} (stages: {', '.join(STAGES)})", file=sys.stderr)
        return EXIT_FAILED
    deployed = Deployed(args.deployed)
    if args.action == "changed":
        for stage in deployed.changed(args.configs, tuple(args.stages) or STAGES):
            print(stage)
    else:
        for stage in args.stages or STAGES:
            deployed.record(stage, args.configs)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="frontgate", description="frontgate operations")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("--configs", type=Path, default=Path("configs"), help="config directory (default: configs)")
        c.set_defaults(func=func)
        return c

    def supervised(c: argparse.ArgumentParser) -> None:
        c.add_argument("--supervisord-conf", type=Path, default=Path("supervisord.conf"),
                       help="supervisord config (default: supervisord.conf)")

    def status_dir(c: argparse.ArgumentParser) -> None:
        c.add_argument("--status-dir", type=Path, default=Path("run/status"),
                       help="the stage processes' status files (default: run/status)")

    def deployed_dir(c: argparse.ArgumentParser) -> None:
        c.add_argument("--deployed", type=Path, default=Path("run/deployed"),
                       help="fingerprints of the deployed configs (default: run/deployed)")

    command("check", cmd_check, "validate the three configs; exit 2 on any error")
    c = command("reload", cmd_reload, "validate all configs, then SIGHUP the stages whose config changed")
    supervised(c)
    deployed_dir(c)
    status_dir(c)
    c = command("restart", cmd_restart, "restart a stage's processes one at a time (rolling)")
    c.add_argument("stage", choices=STAGES)
    supervised(c)
    status_dir(c)
    c = command("status", cmd_status, "processes, server health and certificate expiry; exit 1 if a process "
                                      "is not RUNNING")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    supervised(c)
    status_dir(c)
    c = command("health", cmd_health, "each app's state from the running health checker; exit 1 if an app has "
                                      "no server up and answering its checks")
    c.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                   help="first wait up to this long until every server is checked (make deploy: 15)")
    supervised(c)
    c = command("explain", cmd_explain, "a dry run: which listener, redirect, app (and why not the others), ACL, "
                                        "server, certificate and client-certificate demand a request meets, "
                                        "and the head its backend would receive")
    c.add_argument("url", help="http://host/path or https://host/path")
    c.add_argument("--from", dest="client_ip", default="192.0.2.1",
                   help="the client's address (default: 192.0.2.1, an outside client)")
    c.add_argument("--sni", help="TLS server name (default: the URL's host, for https)")
    c.add_argument("--header", action="append", default=[], metavar="'K: V'", help="a request header (repeatable)")
    c.add_argument("--method", default="GET")
    c.add_argument("--listener", help="the router listener (default: the one the URL's scheme reaches)")
    c.add_argument("--client-cert", metavar="CN", help="the client presents a verified certificate with this CN")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c = command("certs", cmd_certs, "the certificates tls-terminator.toml names: names, issuer, key type, "
                                    "expiry, days left, file; exit 1 if one does not load")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c = command("supervisord-conf", cmd_supervisord_conf, "write supervisord.conf from its template and the "
                                                          "workers and grace in the TOML files (only if it "
                                                          "changes)")
    supervised(c)
    c.add_argument("--template", type=Path, default=Path("supervisord.conf.in"),
                   help="template (default: supervisord.conf.in)")
    c = command("deployed", cmd_deployed, "config fingerprints: print the changed stages, or record the current ones")
    c.add_argument("action", choices=("changed", "record"))
    c.add_argument("stages", nargs="*", metavar="STAGE", help=f"default: all ({', '.join(STAGES)})")
    deployed_dir(c)
    route_cli.add_parsers(command("route", route_cli.main, "the dynamic route table: add, rm, ls, show, status"))
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
