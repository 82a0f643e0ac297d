"""What every frontgate daemon does the same way: logging, config errors at start, the event loop."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, NamedTuple

from frontgate.config import ConfigError
from frontgate.logfields import escape_message
from frontgate.process_status import ProcessStatus

EXIT_CONFIG_ERROR = 2


class _OneLineFormatter(logging.Formatter):
    """A message may quote what a client sent (an SNI name, a peer's error): escaped, so that it
    cannot end its line and forge another. A traceback, added after the message, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_message(record.message)
        return super().formatMessage(record)


def setup_logging(name: str, level: int = logging.INFO) -> logging.Logger:
    """Log lines to stderr as `name[pid]: LEVEL message`; supervisord files and rotates them."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter(f"%(asctime)s {name}[%(process)d]: %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return logging.getLogger(name)


def parse_args(name: str, description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=name, description=description)
    p.add_argument("--config", type=Path, default=Path(f"configs/{name}.toml"),
                   help=f"TOML config file (default: configs/{name}.toml)")
    p.add_argument("--status-dir", type=Path, default=None,
                   help="record the config this process runs and its reloads' outcomes here "
                        "(supervisord.conf: run/status; see frontgate.process_status)")
    return p.parse_args()


def load_or_exit(loader: Callable[[Path], Any], path: Path) -> Any:
    """Load a config at start; on error print the one-line reason and exit with status 2."""
    try:
        return loader(path)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR) from None


class Start(NamedTuple):
    args: argparse.Namespace
    log: logging.Logger
    status: ProcessStatus
    fingerprint: str             # of the config on disk before it was read: a change meanwhile shows as OLD
    config: Any


def start(name: str, description: str, loader: Callable[[Path], Any]) -> Start:
    """What every daemon does first, in this order: its arguments, its log, its status record,
    the fingerprint of its config on disk, then the config itself (or the one-line error, exit 2)."""
    args = parse_args(name, description)
    log = setup_logging(name)
    status = ProcessStatus(args.status_dir, name, args.config)
    fingerprint = status.config_on_disk()
    return Start(args, log, status, fingerprint, load_or_exit(loader, args.config))


def run(main: Callable[[], Awaitable[None]]) -> None:
    """Run the daemon's main coroutine on uvloop (falls back to asyncio's loop if uvloop is absent)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        asyncio.run(main())
    else:
        uvloop.run(main())
