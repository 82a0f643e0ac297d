"""Property-based fuzzing (hypothesis) of the pure parsers: HTTP request and response heads, the
chunked body decoder, the PROXY v2 decoder and the three config loaders. Each may raise only its
own error type, gives the same verdict however its input is split, and never hangs (every example
has a deadline). Inputs are random bytes and mutations of valid messages, so the fuzzer reaches
past the first line. The same targets run under atheris (coverage-guided) in the slow suite."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from frontgate import proxy_protocol
from tests import fuzz_targets
from tests.helpers import REPO

FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")), deadline=1000,
                suppress_health_check=[HealthCheck.too_slow])
cuts = st.binary(max_size=16)

VALID_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: maps.localhost\r\n\r\n",
    b"POST /a?b=c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET http://maps.localhost/x HTTP/1.1\r\nHost: maps.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"\r\nOPTIONS * HTTP/1.0\r\n\r\n",
]
VALID_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"HTTP/1.0 204 No Content\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
]
VALID_CHUNKED = [b"5\r\nhello\r\n0\r\n\r\n", b"a;x=\"y\"\r\n0123456789\r\n0\r\nT: v\r\n\r\nNEXT", b"0\r\n\r\n"]
# Bytes that tend to matter to these grammars.
SPECIAL = st.sampled_from([b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b",", b";", b"\x00", b"\x7f", b"\xff", b"0",
                           b"Content-Length: 1", b"Transfer-Encoding: chunked", b"Host: a", b"HTTP/1.1", b"=",
                           b'"', b"\\", b"fffffffffffffffff", b"\r\n\r\n"])


@st.composite
def mutated(draw, seeds: list[bytes]):
    """A valid message with a few bytes replaced, inserted or deleted."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.integers(0, 2))
        insert = draw(st.one_of(SPECIAL, st.binary(min_size=1, max_size=4)))
        if op == 0:
            data[pos:pos] = insert
        elif op == 1:
            del data[pos:pos + draw(st.integers(1, 8))]
        else:
            data[pos:pos + len(insert)] = insert
    return bytes(data)


def inputs(seeds):
    return st.one_of(st.binary(max_size=600), mutated(seeds))


@FUZZ
@given(inputs(VALID_REQUESTS), cuts)
def test_request_head_parser(data, cut):
    fuzz_targets.request_head(data, cut)


@FUZZ
@given(inputs(VALID_RESPONSES), cuts)
def test_response_head_parser(data, cut):
    fuzz_targets.response_head(data, cut)


@FUZZ
@given(inputs(VALID_CHUNKED), cuts)
def test_chunked_decoder(data, cut):
    fuzz_targets.chunked_body(data, cut)


def _proxy_seeds() -> list[bytes]:
    headers = [
        proxy_protocol.ProxyHeader(command="PROXY", family="TCP4", src=("127.0.0.3", 5000), dst=("127.0.0.1", 443),
                                   authority="maps.localhost", alpn="http/1.1", tls_version="TLSv1.3",
                                   tls_cipher="TLS_AES_128_GCM_SHA256", client_cert_subject=None),
        proxy_protocol.ProxyHeader(command="PROXY", family="TCP6", src=("::1", 1), dst=("::1", 2), authority=None,
                                   alpn=None, tls_version=None, tls_cipher=None, client_cert_subject=None),
        proxy_protocol.ProxyHeader(command="LOCAL", family="UNSPEC", src=None, dst=None, authority=None,
                                   alpn=None, tls_version=None, tls_cipher=None, client_cert_subject=None),
    ]
    return [proxy_protocol.encode(h) + b"GET /" for h in headers]


@FUZZ
@given(inputs(_proxy_seeds()), cuts)
def test_proxy_v2_decoder(data, cut):
    fuzz_targets.proxy_v2(data, cut)


def _config_seeds() -> list[bytes]:
    return [(REPO / "configs" / f"{name}.toml").read_bytes()
            for name in ("mux-router", "tls-terminator", "health-checker")]


TOML_BITS = st.sampled_from([b"\n[x]\n", b"\n[[app]]\n", b" = ", b"\"", b"'", b"[", b"]", b"{", b"}", b"-1", b"0",
                             b"1e999", b"nan", b"inf", b"true", b"\"\"", b"[]", b"\n", b"#", b"\"unix:\"",
                             b"\"[::1]:0\"", b"\"*.\"", b"99999999999999999999", b"\xff"])


@st.composite
def toml_mutations(draw):
    text = bytearray(draw(st.sampled_from(_config_seeds())))
    for _ in range(draw(st.integers(1, 5))):
        pos = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text[pos:pos] = draw(TOML_BITS)
        else:
            # drop a value, a key, a line: the loader must name what is missing
            end = text.find(b"\n", pos)
            del text[pos:end if end > 0 and draw(st.booleans()) else pos + draw(st.integers(1, 12))]
    return bytes(text)


@FUZZ
@given(st.one_of(toml_mutations(), st.binary(max_size=300)), st.sampled_from(["router", "terminator", "checker"]))
def test_config_loaders(data, kind):
    fuzz_targets.config_file(data, kind)


@st.composite
def hello_mutations(draw):
    data = bytearray(draw(st.sampled_from(fuzz_targets.real_client_hellos())))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))       # flip one byte: lengths, types, names
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))):]
    return bytes(data)


@FUZZ
@given(st.one_of(st.binary(max_size=600), hello_mutations(), st.binary(max_size=8).map(lambda b: b"\x16\x03\x01" + b)), cuts)
def test_clienthello_sni_reader(data, cut):
    if fuzz_targets.clienthello is None:
        pytest.skip("no pure ClientHello parser (tls_terminator/clienthello.py) yet")
    fuzz_targets.client_hello(data, cut)


def test_clienthello_reader_reads_real_hellos():
    if fuzz_targets.clienthello is None:
        pytest.skip("no pure ClientHello parser (tls_terminator/clienthello.py) yet")
    names = [fuzz_targets.clienthello.read_sni(h).server_name for h in fuzz_targets.real_client_hellos()]
    assert names == ["maps.localhost", None, "x." * 60 + "localhost"]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["request_head", "response_head", "chunked_body", "proxy_v2", "config", "client_hello"])
def test_atheris(target, tmp_path):
    pytest.importorskip("atheris")
    if target not in fuzz_targets.TARGETS:
        pytest.skip(f"no {target} parser yet")
    # libFuzzer: bounded by runs and seconds; -timeout makes any single input over 5 s a failure.
    seeds = {"request_head": VALID_REQUESTS, "response_head": VALID_RESPONSES, "chunked_body": VALID_CHUNKED,
             "proxy_v2": _proxy_seeds(), "config": _config_seeds(),
             "client_hello": fuzz_targets.real_client_hellos() if fuzz_targets.clienthello else []}[target]
    fuzz_targets.write_seed_corpus(tmp_path / "corpus", seeds)
    r = subprocess.run([sys.executable, "-m", "tests.fuzz_atheris", target, str(tmp_path / "corpus"),
                        "-runs=300000", "-max_total_time=20",
                        "-timeout=5", "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-4000:]
