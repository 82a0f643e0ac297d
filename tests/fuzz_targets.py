"""Fuzz targets shared by the hypothesis tests (tests/unit/test_fuzz_parsers.py) and the atheris
runner (`python -m tests.fuzz_atheris TARGET [CORPUS_DIR] [libFuzzer flags]`, used by the slow test).

Each target takes bytes and may raise only the parser's own error type; anything else is a bug.
Bytes are split into pieces at positions taken from the input itself, because every parser promises
the same verdict whatever way the input is split.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from frontgate import config, proxy_protocol
from mux_router.chunked import ChunkedDecoder
from mux_router.http1 import HttpError
from mux_router.http1_request import RequestHeadParser
from mux_router.http1_response import ResponseHeadParser

REPO = Path(__file__).resolve().parents[1]


def split(data: bytes, cuts: bytes) -> list[bytes]:
    """`data` cut at positions derived from `cuts` (each byte a step of 1..256)."""
    pieces, pos = [], 0
    for step in cuts:
        end = min(len(data), pos + step + 1)
        pieces.append(data[pos:end])
        pos = end
        if pos >= len(data):
            break
    pieces.append(data[pos:])
    return pieces


def _verdict(run):
    try:
        return ("ok", run())
    except HttpError as e:
        return ("error", e.status)


def _feed_head(parser_factory, pieces: list[bytes]):
    parser = parser_factory()
    for i, piece in enumerate(pieces):
        head = parser.feed(piece)
        if head is not None:
            return head, parser.leftover + b"".join(pieces[i + 1:])
    return None


def request_head(data: bytes, cuts: bytes = b"") -> None:
    whole = _verdict(lambda: _feed_head(RequestHeadParser, [data]))
    pieces = _verdict(lambda: _feed_head(RequestHeadParser, split(data, cuts)))
    # A head that is complete in one piece must be judged the same in pieces (errors may come
    # earlier in pieces only in that the same status is reached).
    assert whole == pieces, (data, whole, pieces)


def response_head(data: bytes, cuts: bytes = b"") -> None:
    for method in ("GET", "HEAD"):
        whole = _verdict(lambda: _feed_head(lambda: ResponseHeadParser(method), [data]))
        pieces = _verdict(lambda: _feed_head(lambda: ResponseHeadParser(method), split(data, cuts)))
        assert whole == pieces, (data, whole, pieces)


def _dechunk(pieces: list[bytes]):
    decoder = ChunkedDecoder()
    body, used = b"", 0
    for piece in pieces:
        events, consumed = decoder.feed(piece)
        assert 0 <= consumed <= len(piece)
        assert consumed == len(piece) or decoder.done
        used += consumed
        body += b"".join(e.data for e in events if hasattr(e, "data"))
        if decoder.done:
            break
    assert decoder.body_bytes == len(body)
    return decoder.done, body, used


def chunked_body(data: bytes, cuts: bytes = b"") -> None:
    whole = _verdict(lambda: _dechunk([data]))
    pieces = _verdict(lambda: _dechunk(split(data, cuts)))
    assert whole == pieces, (data, whole, pieces)


def proxy_v2(data: bytes, cuts: bytes = b"") -> None:
    try:
        result = proxy_protocol.decode(data)
    except proxy_protocol.ProxyProtocolError:
        return
    if result is not None:
        header, consumed = result
        assert 16 <= consumed <= len(data)
        # What was decoded encodes again, and decodes to the same header.
        try:
            again = proxy_protocol.encode(header)
        except proxy_protocol.ProxyProtocolError:
            return      # e.g. TLVs the encoder does not write; decoding was still safe
        assert proxy_protocol.decode(again)[0] == header
    # Every prefix is "need more" or an error, never a different header.
    for n in sorted({len(data) // 3, len(data) // 2, max(0, len(data) - 1)}):
        try:
            partial = proxy_protocol.decode(data[:n])
        except proxy_protocol.ProxyProtocolError:
            continue
        assert partial is None or partial == result


try:    # the SNI passthrough reader is newer than the rest; fuzz it once it is there
    from tls_terminator import clienthello
except ImportError:     # pragma: no cover
    clienthello = None


def client_hello(data: bytes, cuts: bytes = b"") -> None:
    try:
        info = clienthello.read_sni(data)
    except clienthello.NotAClientHello:
        return
    if info is not None:
        assert 0 < info.length <= len(data)
        assert info.server_name is None or (info.server_name.isascii() and info.server_name == info.server_name.lower())
        # What follows the ClientHello does not change it.
        assert clienthello.read_sni(data[:info.length]) == info
    # A prefix of the input is "need more" or an error, never a different answer.
    cut = len(data) * (cuts[0] if cuts else 128) // 256
    try:
        partial = clienthello.read_sni(data[:cut])
    except clienthello.NotAClientHello:
        return
    assert partial is None or partial == info


@functools.cache
def real_client_hellos() -> list[bytes]:
    """ClientHellos as Python's OpenSSL writes them (TLS 1.2 and 1.3, with and without SNI)."""
    import ssl
    out = []
    for name in ("maps.localhost", None, "x." * 60 + "localhost"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        out.append(outgoing.read())
    return out


_CONFIG_DIR = None


def _config_dir() -> Path:
    """A directory with the files a config may name (a certificate), reused across inputs."""
    global _CONFIG_DIR
    if _CONFIG_DIR is None:
        _CONFIG_DIR = Path(tempfile.mkdtemp(prefix="fuzz-config-"))
        atexit.register(shutil.rmtree, _CONFIG_DIR, ignore_errors=True)
        (_CONFIG_DIR / "site.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
        (_CONFIG_DIR / "mux-router.toml").write_text((REPO / "configs" / "mux-router.toml").read_text())
    return _CONFIG_DIR


LOADERS = {"router": config.load_router_config, "terminator": config.load_terminator_config,
           "checker": config.load_checker_config}


def config_file(data: bytes, kind: str = "router") -> None:
    path = _config_dir() / f"fuzz-{kind}.toml"
    path.write_bytes(data)
    try:
        LOADERS[kind](path)
    except config.ConfigError as e:
        assert "\n" not in str(e), f"ConfigError message spans lines: {str(e)!r}"


def config_any(data: bytes, cuts: bytes = b"") -> None:
    kind = ("router", "terminator", "checker")[cuts[0] % 3 if cuts else 0]
    config_file(data, kind)


TARGETS = {"request_head": request_head, "response_head": response_head, "chunked_body": chunked_body,
           "proxy_v2": proxy_v2, "config": config_any}
if clienthello is not None:
    TARGETS["client_hello"] = client_hello


def write_seed_corpus(directory: Path, seeds: list[bytes]) -> None:
    """Seeds in the runner's input format: one byte saying "no cuts", then the message."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds):
        (directory / f"seed-{i}").write_bytes(b"\x00" + seed)
