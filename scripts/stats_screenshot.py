#!/usr/bin/env python3
"""`make stats-screenshot`: a PNG of the running deployment's router stats page, taken with
headless Chromium (Debian's `chromium`).

    scripts/stats_screenshot.py [PNG] [--config configs/mux-router.toml] [--url URL]

The page's address comes from [admin] in the router's TOML (or --url). Exit status 1, with the
reason, when there is no [admin], nothing answers there, or Chromium is missing or fails.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from frontgate.config import ConfigError, load_router_config  # noqa: E402

CHROMIUM_TIMEOUT = 60
WINDOW = "1280,900"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_argv(binary: str, profile: Path, *extra: str) -> list[str]:
    return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-dev-shm-usage", f"--user-data-dir={profile}", *extra]


def run_chromium(argv: list[str]) -> subprocess.CompletedProcess:
    """Chromium in its own session, killed whole (it forks helpers) when it overstays."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def screenshot(url: str, png: Path) -> subprocess.CompletedProcess:
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (apt-get install -y chromium)")
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="stats-chromium-") as profile:
        return run_chromium(chromium_argv(binary, Path(profile), f"--screenshot={png.resolve()}",
                                          f"--window-size={WINDOW}", url))


def dump_dom(url: str) -> str:
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="stats-chromium-") as profile:
        result = run_chromium(chromium_argv(binary, Path(profile), "--dump-dom", url))
    return result.stdout.decode(errors="replace")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("png", nargs="?", type=Path, default=REPO / "logs" / "stats.png")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "mux-router.toml")
    p.add_argument("--url", help="the stats page (default: http://<router [admin] address>/stats)")
    args = p.parse_args()
    url = args.url
    if url is None:
        try:
            admin = load_router_config(args.config).admin
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if admin is None:
            print(f"error: {args.config} has no [admin] table: the router serves no stats page", file=sys.stderr)
            return 1
        url = f"http://{admin.address}/stats"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            resp.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        print(f"error: nothing answers at {url} ({reason}): is the deployment running? (make deploy)",
              file=sys.stderr)
        return 1
    try:
        result = screenshot(url, args.png)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not args.png.is_file() or args.png.stat().st_size == 0:
        print(f"error: chromium wrote no screenshot (exit {result.returncode}):\n"
              f"{result.stderr.decode(errors='replace')[-2000:]}", file=sys.stderr)
        return 1
    print(f"{args.png}: screenshot of {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
