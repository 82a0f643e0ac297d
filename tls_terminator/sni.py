"""Choosing a certificate for a TLS server name (SNI), pure.

Names come from the certificates themselves (subjectAltName dNSName, or the subject CN when a
certificate has no DNS names in a SAN). Matching follows RFC 6125 section 6.4: exact names win over
wildcards; a wildcard is only a whole left-most label (`*.example.com`) and stands for exactly one
label, so it matches `a.example.com` but neither `example.com` nor `a.b.example.com`. Partial-label
wildcards (`f*.example.com`) and wildcards elsewhere are never matched. Comparison is ASCII
case-insensitive and ignores one trailing dot. When several certificates claim a name, the one
configured first wins, so the order in the TOML file is the tie-breaker.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Iterable, Mapping, Sequence, TypeVar

T = TypeVar("T")


def normalize(name: str) -> str:
    """Lower-case ASCII, without a trailing dot."""
    name = name.strip().lower()
    return name[:-1] if name.endswith(".") else name


def wildcard_suffix(pattern: str) -> str | None:
    """`*.example.com` -> `example.com`; None when `pattern` is not a usable wildcard."""
    if not pattern.startswith("*."):
        return None
    suffix = pattern[2:]
    if not suffix or "*" in suffix or suffix.startswith(".") or ".." in suffix:
        return None
    return suffix


@dataclass(frozen=True)
class SniIndex(Generic[T]):
    default: T
    exact: Mapping[str, T] = field(default_factory=dict)
    wildcards: Mapping[str, T] = field(default_factory=dict)    # suffix after "*." -> entry

    def lookup(self, server_name: str | bytes | None) -> T:
        """The entry for `server_name`; the default when it is absent or matches nothing."""
        if isinstance(server_name, bytes):
            try:
                server_name = server_name.decode("ascii")
            except UnicodeDecodeError:
                return self.default
        if not server_name:
            return self.default
        name = normalize(server_name)
        entry = self.exact.get(name)
        if entry is not None:
            return entry
        first, dot, rest = name.partition(".")
        if dot and first and "*" not in first:
            entry = self.wildcards.get(rest)
            if entry is not None:
                return entry
        return self.default


def build_index(entries: Iterable[tuple[Sequence[str], T]], default: T) -> SniIndex[T]:
    """`entries`: (DNS names, entry) in configuration order. Names that can never match (partial
    wildcards, empty names) are dropped; see `unusable_names`."""
    exact: dict[str, T] = {}
    wildcards: dict[str, T] = {}
    for names, entry in entries:
        for raw in names:
            name = normalize(raw)
            if not name:
                continue
            if name.startswith("*."):
                suffix = wildcard_suffix(name)
                if suffix is not None:
                    wildcards.setdefault(suffix, entry)
            elif "*" not in name:
                exact.setdefault(name, entry)
    return SniIndex(default=default, exact=exact, wildcards=wildcards)


def unusable_names(names: Iterable[str]) -> list[str]:
    """Names that `build_index` drops (worth a warning: the operator may expect them to match)."""
    out = []
    for raw in names:
        name = normalize(raw)
        if not name or ("*" in name and wildcard_suffix(name) is None):
            out.append(raw)
    return out
