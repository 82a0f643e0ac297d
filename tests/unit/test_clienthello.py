"""The raw ClientHello SNI reader: real ClientHellos (stdlib ssl, memory BIO), incremental input, and
every way the bytes can fail to be one."""
from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.certmaker import client_hello
from tls_terminator.clienthello import MAX_HELLO, ClientHelloInfo, NotAClientHello, read_sni


CORRUPTIBLE = client_hello("c.test")


def synthetic_hello(extensions: bytes | None, version: bytes = b"\x03\x03") -> bytes:
    body = version + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    if extensions is not None:
        body += struct.pack("!H", len(extensions)) + extensions
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(message)) + message


def sni_extension(*names: tuple[int, bytes]) -> bytes:
    entries = b"".join(struct.pack("!BH", kind, len(n)) + n for kind, n in names)
    value = struct.pack("!H", len(entries)) + entries
    return struct.pack("!HH", 0, len(value)) + value


@pytest.mark.parametrize("name", ["app.test", "x.pass.example", None])
def test_real_client_hello(name):
    hello = client_hello(name)
    assert read_sni(hello) == ClientHelloInfo(server_name=name, length=len(hello))
    # What follows (early data, a second record) is not consumed.
    assert read_sni(hello + b"\x17\x03\x03\x00\x01x") == ClientHelloInfo(server_name=name, length=len(hello))


def test_tls12_only_client():
    hello = client_hello("old.test", maximum_version=ssl.TLSVersion.TLSv1_2)
    assert read_sni(hello).server_name == "old.test"


def test_upper_case_name_is_lowered():
    assert read_sni(synthetic_hello(sni_extension((0, b"App.TEST")))).server_name == "app.test"


def test_byte_at_a_time_needs_more_until_complete():
    hello = client_hello("app.test")
    for i in range(len(hello)):
        assert read_sni(hello[:i]) is None, i
    assert read_sni(hello).server_name == "app.test"


def test_hello_split_across_records():
    hello = client_hello("split.test")
    message = hello[5:]
    records = b"".join(b"\x16\x03\x01" + struct.pack("!H", len(part)) + part
                       for part in (message[:7], message[7:100], message[100:]))
    assert read_sni(records) == ClientHelloInfo(server_name="split.test", length=len(records))
    for i in range(len(records)):
        assert read_sni(records[:i]) is None


def test_no_extensions_means_no_sni():
    assert read_sni(synthetic_hello(None)).server_name is None
    assert read_sni(synthetic_hello(b"")).server_name is None


@pytest.mark.parametrize("data,why", [
    (b"GET / HTTP/1.1\r\n", "record type"),
    (b"\x16\x02\x00", "not TLS"),
    (b"\x16\x03\x05\x00\x10", "not TLS"),
    (b"\x16\x03\x01\x00\x00", "record length"),
    (b"\x16\x03\x01\x50\x00", "record length"),
    (b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", "not a ClientHello"),
    (b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", "too short"),
    (b"\x16\x03\x01\x00\x05\x01\x01\x00\x01\x00", "exceeds"),
])
def test_not_a_client_hello(data, why):
    with pytest.raises(NotAClientHello, match=why):
        read_sni(data)


@pytest.mark.parametrize("extensions,why", [
    (sni_extension((0, b"a.test"), (0, b"b.test")), "two host names"),
    (sni_extension((0, b"")), "empty"),
    (sni_extension((0, b"\xffx.test")), "not ASCII"),
    (sni_extension((0, b"a.test")) * 2, "appears twice"),
    (struct.pack("!HH", 0, 3) + b"\x00\x05\x00", "truncated"),
    (b"\x00", "truncated"),
])
def test_malformed_extensions(extensions, why):
    with pytest.raises(NotAClientHello, match=why):
        read_sni(synthetic_hello(extensions))


def test_other_name_types_are_ignored():
    assert read_sni(synthetic_hello(sni_extension((1, b"whatever"), (0, b"h.test")))).server_name == "h.test"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data):
    try:
        result = read_sni(data)
    except NotAClientHello:
        return
    assert result is None or isinstance(result, ClientHelloInfo)


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,60}[a-z0-9])?", fullmatch=True), st.data())
def test_any_prefix_of_a_hello_needs_more_and_the_whole_gives_the_name(name, data):
    hello = synthetic_hello(sni_extension((0, name.encode())) + struct.pack("!HH", 16, 0))
    cut = data.draw(st.integers(0, len(hello) - 1))
    assert read_sni(hello[:cut]) is None
    assert read_sni(hello).server_name == name




@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.integers(0, 10_000))
def test_corrupted_hello_raises_or_reads(junk, position):
    hello = bytearray(CORRUPTIBLE)
    position %= len(hello)
    hello[position:position + len(junk)] = junk
    try:
        result = read_sni(bytes(hello))
    except NotAClientHello:
        return
    assert result is None or len(bytes(hello)) >= result.length


def test_limit():
    assert MAX_HELLO >= 16384
