"""PROXY protocol v2 codec: round trips, incremental decoding, and every way a header can be wrong."""
from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frontgate import proxy_protocol
from frontgate.proxy_protocol import (MAX_PAYLOAD, SIGNATURE, ProxyHeader, ProxyProtocolError, decode,
                                      encode)

TLS_HEADER = ProxyHeader(command="PROXY", family="TCP4", src=("203.0.113.7", 51234), dst=("192.0.2.1", 443),
                         authority="maps.example.com", alpn="http/1.1", tls_version="TLSv1.3",
                         tls_cipher="TLS_AES_256_GCM_SHA384")

ROUND_TRIPS = [
    TLS_HEADER,
    ProxyHeader(command="PROXY", family="TCP4", src=("10.0.0.1", 1), dst=("10.0.0.2", 65535)),
    ProxyHeader(command="PROXY", family="TCP6", src=("2001:db8::1", 40000), dst=("::1", 8443),
                authority="app.test", tls_version="TLSv1.2", tls_cipher="ECDHE-RSA-AES128-GCM-SHA256"),
    ProxyHeader(command="PROXY", family="TCP6", src=("::ffff:102:304", 0), dst=("fe80::1", 443)),
    ProxyHeader(command="PROXY", family="UNSPEC"),
    ProxyHeader(command="LOCAL", family="UNSPEC"),
    ProxyHeader(command="LOCAL", family="UNSPEC", authority="health.check"),
    ProxyHeader(command="PROXY", family="TCP4", src=("127.0.0.1", 5), dst=("127.0.0.1", 6),
                client_cert_subject="alice", tls_version="TLSv1.3"),
    ProxyHeader(command="PROXY", family="TCP4", src=("127.0.0.1", 5), dst=("127.0.0.1", 6),
                authority="b\u00fccher.example"),   # AUTHORITY is UTF-8
]


@pytest.mark.parametrize("header", ROUND_TRIPS)
def test_round_trip(header):
    data = encode(header)
    assert data.startswith(SIGNATURE)
    assert decode(data) == (header, len(data))
    # What follows the header is the proxied stream: it is not consumed.
    assert decode(data + b"GET / HTTP/1.1\r\n") == (header, len(data))
    assert decode(bytearray(data)) == (header, len(data))
    assert decode(memoryview(data)) == (header, len(data))


def test_wire_layout_matches_the_spec():
    data = encode(ProxyHeader(command="PROXY", family="TCP4", src=("1.2.3.4", 0x1234), dst=("5.6.7.8", 443)))
    assert data == SIGNATURE + bytes([0x21, 0x11, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 0x12, 0x34, 0x01, 0xBB])
    assert encode(ProxyHeader(command="LOCAL")) == SIGNATURE + bytes([0x20, 0x00, 0, 0])
    tls = encode(ProxyHeader(command="PROXY", family="UNSPEC", alpn="h2", tls_version="TLSv1.3"))
    assert tls[16:] == (bytes([0x01, 0, 2]) + b"h2" +
                        bytes([0x20, 0, 5 + 3 + 7, 0x01, 0, 0, 0, 1, 0x21, 0, 7]) + b"TLSv1.3")


def test_byte_at_a_time():
    data = encode(TLS_HEADER) + b"payload"
    header_length = len(data) - len(b"payload")
    for i in range(header_length):
        assert decode(data[:i]) is None, i
    assert decode(data[:header_length]) == (TLS_HEADER, header_length)


def test_unknown_tlvs_are_skipped():
    base = encode(ProxyHeader(command="PROXY", family="TCP4", src=("1.1.1.1", 1), dst=("2.2.2.2", 2),
                              authority="x.test"))
    extra = bytes([0x04, 0, 3]) + b"\0\0\0" + bytes([0xE0, 0, 1]) + b"z"     # NOOP, custom
    data = base[:14] + struct.pack("!H", len(base) - 16 + len(extra)) + base[16:] + extra
    header, consumed = decode(data)
    assert header.authority == "x.test" and consumed == len(data)


def test_local_header_addresses_are_ignored():
    # A LOCAL header may carry a family and addresses (e.g. a health check); they mean nothing.
    proxied = encode(ProxyHeader(command="PROXY", family="TCP4", src=("1.1.1.1", 1), dst=("2.2.2.2", 2)))
    local = proxied[:12] + b"\x20" + proxied[13:]
    assert decode(local) == (ProxyHeader(command="LOCAL", family="TCP4"), len(local))


# --------------------------------------------------------------------------- malformed input

def _header(ver_cmd=0x21, family=0x11, payload=b"\0" * 12, length=None):
    return SIGNATURE + bytes([ver_cmd, family]) + struct.pack("!H", len(payload) if length is None else length) + payload


def _error(data) -> str:
    with pytest.raises(ProxyProtocolError) as e:
        decode(data)
    return str(e.value)


def test_bad_signature_is_rejected_at_the_first_wrong_byte():
    assert "bad signature" in _error(b"G")
    assert "bad signature" in _error(b"\r\n\r\n\x00\r\nQUIT!")
    assert "bad signature" in _error(b"\x16\x03\x01\x02\x00")      # a TLS ClientHello
    assert "bad signature" in _error(b"GET / HTTP/1.1\r\n\r\n")
    assert decode(b"\r\n\r\n\x00") is None                            # still a valid prefix


def test_v1_text_header_is_named():
    assert "v1" in _error(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
    assert "v1" in _error(b"PRO")


def test_bad_version():
    assert "version 1" in _error(SIGNATURE + b"\x11")
    assert "version 3" in _error(_header(ver_cmd=0x31))


def test_bad_command():
    assert "command 0x2" in _error(SIGNATURE + b"\x22")
    assert "command 0xf" in _error(_header(ver_cmd=0x2F))


@pytest.mark.parametrize("family", [0x12, 0x22, 0x31, 0x32, 0x10, 0x01, 0x41, 0xFF])
def test_bad_family(family):
    # UDP, unix sockets and nonsense: rejected as soon as the family byte arrives.
    assert f"0x{family:02x}" in _error(SIGNATURE + bytes([0x21, family]))


@pytest.mark.parametrize("family,needed", [(0x11, 12), (0x21, 36)])
def test_length_too_short_for_addresses(family, needed):
    assert "too short" in _error(_header(family=family, payload=b"\0" * (needed - 1)))
    # Rejected from the fixed part alone, before the payload arrives.
    assert "too short" in _error(_header(family=family, payload=b"", length=needed - 1))


def test_oversize_is_rejected_from_the_length_field():
    assert "exceeds" in _error(_header(payload=b"", length=MAX_PAYLOAD + 1))
    assert "exceeds" in _error(_header(payload=b"", length=0xFFFF))
    assert decode(_header(payload=b"\0" * 12 + bytes([0xE0]) + struct.pack("!H", MAX_PAYLOAD - 15)
                          + b"\0" * (MAX_PAYLOAD - 15)))[1] == 16 + MAX_PAYLOAD


@pytest.mark.parametrize("tlvs,problem", [
    (b"\x02", "truncated TLV"),                            # type byte only
    (b"\x02\x00", "truncated TLV"),                        # half a length
    (b"\x02\x00\x05abc", "truncated TLV 0x02"),            # value shorter than its length
    (b"\x01\x00\x02h2\x01\x00\x02h2", "appears twice"),
    (b"\x20\x00\x03\x01\x00\x00", "shorter than its 5-byte head"),
    (b"\x20\x00\x07\x01\x00\x00\x00\x00\x21\x00", "truncated SSL sub-TLV"),
    (b"\x20\x00\x09\x01\x00\x00\x00\x00\x21\x00\x05T", "truncated SSL sub-TLV 0x21"),
    (b"\x01\x00\x02\xff\xfe", "ALPN TLV is not valid ascii"),
    (b"\x02\x00\x02\xc3\x28", "AUTHORITY TLV is not valid utf-8"),
])
def test_malformed_tlvs(tlvs, problem):
    assert problem in _error(_header(payload=b"\0" * 12 + tlvs))


@pytest.mark.parametrize("header,problem", [
    (ProxyHeader(command="ACCEPT"), "command"),
    (ProxyHeader(family="UDP4"), "family"),
    (ProxyHeader(family="TCP4", src=("1.2.3.4", 1)), "needs both"),
    (ProxyHeader(family="TCP4", src=("::1", 1), dst=("1.2.3.4", 2)), "not an IPv4"),
    (ProxyHeader(family="TCP6", src=("1.2.3.4", 1), dst=("::1", 2)), "not an IPv6"),
    (ProxyHeader(family="TCP4", src=("1.2.3.4", 70000), dst=("1.2.3.4", 2)), "out of range"),
    (ProxyHeader(family="TCP4", src=("localhost", 1), dst=("1.2.3.4", 2)), "not an IP"),
    (ProxyHeader(family="UNSPEC", src=("1.2.3.4", 1), dst=("1.2.3.4", 2)), "no addresses"),
    (ProxyHeader(command="LOCAL", family="TCP4", src=("1.2.3.4", 1), dst=("1.2.3.4", 2)), "LOCAL"),
    (ProxyHeader(alpn="h\u00e9"), "not ASCII"),
    (ProxyHeader(authority="a" * MAX_PAYLOAD), "exceeds"),
])
def test_encode_refuses_what_it_cannot_represent(header, problem):
    with pytest.raises(ProxyProtocolError, match=problem):
        encode(header)


# --------------------------------------------------------------------------- properties

_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(str)
_port = st.integers(0, 65535)
_ascii = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@st.composite
def headers(draw):
    command = draw(st.sampled_from(["PROXY", "LOCAL"]))
    family = "UNSPEC" if command == "LOCAL" else draw(st.sampled_from(["TCP4", "TCP6", "UNSPEC"]))
    src = dst = None
    if family != "UNSPEC":
        ip = _ipv4 if family == "TCP4" else _ipv6
        src, dst = (draw(ip), draw(_port)), (draw(ip), draw(_port))
    optional = lambda s: st.none() | s  # noqa: E731
    return ProxyHeader(command=command, family=family, src=src, dst=dst,
                       authority=draw(optional(st.text(st.characters(exclude_categories=["Cs"]), max_size=60))),
                       alpn=draw(optional(_ascii)), tls_version=draw(optional(_ascii)),
                       tls_cipher=draw(optional(_ascii)),
                       client_cert_subject=draw(optional(st.text(st.characters(exclude_categories=["Cs"]),
                                                                 max_size=40))))


@settings(max_examples=300, deadline=None)
@given(headers(), st.binary(max_size=20))
def test_round_trip_property(header, trailing):
    data = encode(header)
    assert decode(data + trailing) == (header, len(data))
    assert decode(data[:len(data) - 1]) is None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_never_crashes(data):
    # Whatever arrives, decode answers with None, a header, or ProxyProtocolError: nothing else.
    for candidate in (data, SIGNATURE + data):
        try:
            result = decode(candidate)
        except ProxyProtocolError:
            continue
        assert result is None or result[1] <= len(candidate)


def test_ipv6_addresses_come_back_in_canonical_form():
    header = ProxyHeader(family="TCP6", src=("2001:0db8:0000::0001", 1), dst=("::1", 2))
    decoded, _ = decode(encode(header))
    assert decoded.src == (str(ipaddress.ip_address("2001:db8::1")), 1)


def test_addresses_inet_pton_refuses_still_encode_when_ipaddress_takes_them():
    # The fast path (inet_pton) has no zone ids; ipaddress does, and the zone is not on the wire.
    scoped = ProxyHeader(family="TCP6", src=("fe80::1%eth0", 1), dst=("fe80::2", 2))
    plain = ProxyHeader(family="TCP6", src=("fe80::1", 1), dst=("fe80::2", 2))
    assert encode(scoped) == encode(plain)


@pytest.mark.parametrize("client_flags,verify,expected", [
    (proxy_protocol.PP2_CLIENT_SSL | proxy_protocol.PP2_CLIENT_CERT_CONN, 0, "alice"),
    (proxy_protocol.PP2_CLIENT_SSL | proxy_protocol.PP2_CLIENT_CERT_CONN, 1, None),     # did not verify
    (proxy_protocol.PP2_CLIENT_SSL, 0, None),                                          # no certificate came
    (proxy_protocol.PP2_CLIENT_SSL | proxy_protocol.PP2_CLIENT_CERT_SESS, 0, None),    # not on this connection
])
def test_a_subject_counts_only_when_the_header_says_it_verified(client_flags, verify, expected):
    ssl_tlv = struct.pack("!BI", client_flags, verify) + struct.pack("!BH", proxy_protocol.PP2_SUBTYPE_SSL_CN, 5) + b"alice"
    tlvs = struct.pack("!BH", proxy_protocol.PP2_TYPE_SSL, len(ssl_tlv)) + ssl_tlv
    data = proxy_protocol.SIGNATURE + struct.pack("!BBH", 0x21, 0x00, len(tlvs)) + tlvs
    header, consumed = proxy_protocol.decode(data)
    assert consumed == len(data) and header.client_cert_subject == expected
