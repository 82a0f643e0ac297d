"""The machinery every config file is read with: a TOML table that knows its file and key path
(Table: typed getters, unknown keys refused), addresses, host patterns, networks, regexes, and the
one error type. Every problem becomes one ConfigError naming the file, the key path and what is
wrong, so that `frontgate check` and a daemon at start print the same single line. Relative paths
resolve against the TOML file's directory, so a config means the same thing whatever directory a
daemon is started from."""
from __future__ import annotations

import functools
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from frontgate import names

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    def __init__(self, file: str | Path, key: str, problem: str):
        self.file, self.key, self.problem = str(file), key, problem
        super().__init__(f"{self.file}: {key}: {problem}" if key else f"{self.file}: {problem}")


@dataclass(frozen=True)
class Address:
    """A TCP `host:port` (IPv6 in brackets) or a unix socket `unix:/path`."""
    host: str | None = None
    port: int | None = None
    path: str | None = None

    @staticmethod
    def parse(text: str) -> "Address":
        if not isinstance(text, str) or not text:
            raise ValueError("expected an address string like '127.0.0.1:8443' or 'unix:/path'")
        if text.startswith("unix:"):
            path = text[5:]
            if not path:
                raise ValueError(f"{text!r}: unix socket path is empty")
            return Address(path=path)
        if text.startswith("["):
            host, sep, port_text = text[1:].partition("]:")
            if not sep:
                raise ValueError(f"{text!r}: expected '[ipv6]:port'")
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep or not host:
                raise ValueError(f"{text!r}: expected 'host:port'")
            if ":" in host:
                raise ValueError(f"{text!r}: IPv6 addresses need brackets, '[::1]:80'")
        if not port_text.isdigit():
            raise ValueError(f"{text!r}: port {port_text!r} is not a number")
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError(f"{text!r}: port {port} out of range 1-65535")
        return Address(host=host, port=port)

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        return self.text

    @functools.cached_property
    def text(self) -> str:
        # Written once per address: the router names servers in every log line, state lookup and
        # pool lookup (`address.text` there: an attribute, where str() is a call).
        if self.path is not None:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in (self.host or "") else f"{self.host}:{self.port}"


MISSING = object()


class Table:
    """A TOML table being validated: typed getters that record which keys were used, so that
    `done()` can reject the rest as unknown."""

    def __init__(self, data: Any, file: Path, keypath: str):
        self.file, self.keypath = file, keypath
        if not isinstance(data, dict):
            raise ConfigError(file, keypath, f"expected a table, got {_kind(data)}")
        self.data = data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.keypath}.{name}" if self.keypath else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), problem)

    def _get(self, name: str, default: Any, types: tuple[type, ...], what: str) -> Any:
        self.used.add(name)
        if name not in self.data:
            if default is MISSING:
                raise self.error(name, "required key is missing")
            return default
        value = self.data[name]
        # bool is an int in Python; TOML keeps them apart and so do we.
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise self.error(name, f"expected {what}, got {_kind(value)}")
        return value

    def str(self, name: str, default: Any = MISSING, choices: tuple[str, ...] = ()) -> Any:
        value = self._get(name, default, (str,), "a string")
        if choices and value is not default and value not in choices:
            raise self.error(name, f"{value!r} is not one of {', '.join(map(repr, choices))}")
        return value

    def bool(self, name: str, default: Any = MISSING) -> Any:
        return self._get(name, default, (bool,), "true or false")

    def int(self, name: str, default: Any = MISSING, lo: int | None = None, hi: int | None = None) -> Any:
        value = self._get(name, default, (int,), "an integer")
        _check_range(self, name, value, lo, hi)
        return value

    def number(self, name: str, default: Any = MISSING, lo: float | None = None,
               hi: float | None = None) -> Any:
        value = self._get(name, default, (int, float), "a number")
        if value is not default:
            value = float(value)
        _check_range(self, name, value, lo, hi)
        return value

    def positive_seconds(self, name: str, default: float) -> float:
        value = self.number(name, default)
        if value <= 0:
            raise self.error(name, f"must be a positive number of seconds, got {value:g}")
        return value

    def list(self, name: str, default: Any = MISSING) -> Any:
        return self._get(name, default, (list,), "an array")

    def str_list(self, name: str, default: Any = MISSING) -> tuple[str, ...]:
        values = self.list(name, default)
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise ConfigError(self.file, f"{self.key(name)}[{i}]", f"expected a string, got {_kind(v)}")
        return tuple(values)

    def str_or_list(self, name: str) -> tuple[str, ...]:
        """`key = "a"` or `key = ["a", "b"]`; absent is empty."""
        if isinstance(self.data.get(name), str):
            return (self.str(name),)
        return self.str_list(name, [])

    def address(self, name: str, default: Any = MISSING) -> Any:
        value = self.str(name, default)
        if value is default:
            return value
        try:
            address = Address.parse(value)
        except ValueError as e:
            raise self.error(name, str(e)) from None
        if address.is_unix and not os.path.isabs(address.path):
            # Like every relative path in these files: from the TOML file's directory, not the cwd.
            address = Address(path=str((self.file.parent / address.path).resolve()))
        return address

    def path(self, name: str, default: Any = MISSING) -> Any:
        value = self.str(name, default)
        if value is default or value is None:
            return value
        if not value:
            raise self.error(name, "path is empty")
        return (self.file.parent / value).resolve() if not Path(value).is_absolute() else Path(value)

    def table(self, name: str, default_empty: bool = True) -> "Table":
        data = self._get(name, {} if default_empty else MISSING, (dict,), "a table")
        return Table(data, self.file, self.key(name))

    def tables(self, name: str) -> list["Table"]:
        """An array of tables, `[[name]]`."""
        values = self.list(name, [])
        out = []
        for i, v in enumerate(values):
            out.append(Table(v, self.file, f"{self.key(name)}[{i}]"))
        return out

    def done(self) -> None:
        for name in self.data:
            if name not in self.used:
                raise self.error(name, "unknown key")


def _check_range(t: Table, name: str, value: Any, lo: Any, hi: Any) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"{lo:g}-{hi:g}" if lo is not None and hi is not None else (
                f">= {lo:g}" if lo is not None else f"<= {hi:g}")
            raise t.error(name, f"{value:g} is out of range ({bounds})")


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _read_toml(path: str | Path) -> tuple[Path, dict]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return path.absolute(), tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"TOML syntax error: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "not UTF-8 text") from None


def load(path: str | Path, build: Callable[[Table], Any]) -> Any:
    file, data = _read_toml(path)
    root = Table(data, file, "")
    result = build(root)
    root.done()
    return result


def host_pattern(t: Table, key: str, i: int, value: str, subtree: bool = True) -> str:
    """An exact host name, `*.suffix` (one label) or, where `subtree`, `**.suffix` (any depth), in
    the names module's normalised form."""
    try:
        return names.pattern(value, subtree=subtree)
    except names.BadName as e:
        raise ConfigError(t.file, f"{t.key(key)}[{i}]", str(e)) from None


def networks(t: Table, name: str, default: Any, aliases: Mapping[str, tuple[Network, ...]]) -> tuple[Network, ...]:
    out: list[Network] = []
    for i, text in enumerate(t.str_list(name, default)):
        if text in aliases:
            out.extend(aliases[text])
            continue
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            known = f" or one of {', '.join(map(repr, aliases))}" if aliases else ""
            raise ConfigError(t.file, f"{t.key(name)}[{i}]", f"{text!r} is not a CIDR network{known}") from None
    return tuple(out)


def regex(t: Table, name: str, default: Any = None) -> re.Pattern | None:
    text = t.str(name, default)
    if text is None:
        return None
    try:
        return re.compile(text)
    except re.error as e:
        raise t.error(name, f"{text!r} is not a valid regular expression: {e}") from None
