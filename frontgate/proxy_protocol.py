"""PROXY protocol version 2 (HAProxy's proxy-protocol.txt, section 2.2), pure: bytes in, bytes out.

The terminator encodes one header per connection; the router decodes it from the first bytes a
socket delivers. `decode` is incremental and strict: it says "need more bytes" (None) only while the
bytes seen so far can still become a valid header, and raises ProxyProtocolError as soon as they
cannot, so a peer that is not speaking PROXY v2 is turned away after its first byte, not after a
timeout. Only what frontgate uses is interpreted: TCP over IPv4/IPv6 (or UNSPEC), and the ALPN,
AUTHORITY and SSL (version, cipher, client CN) TLVs; other TLVs are skipped, as the spec requires.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED_LENGTH = 16                 # signature, version/command, family, length
MAX_PAYLOAD = 4096                # addresses + TLVs; ours are < 300 bytes, HAProxy's are similar
MAX_HEADER = FIXED_LENGTH + MAX_PAYLOAD

_VERSION = 0x2
_COMMANDS = {0x0: "LOCAL", 0x1: "PROXY"}
_COMMAND_CODES = {name: code for code, name in _COMMANDS.items()}
# family byte -> (name, address block length: two addresses and two ports)
_FAMILIES = {0x00: ("UNSPEC", 0), 0x11: ("TCP4", 12), 0x21: ("TCP6", 36)}
_FAMILY_CODES = {name: (code, length) for code, (name, length) in _FAMILIES.items()}

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04

_TLV_HEAD = struct.Struct("!BH")
_SSL_HEAD = struct.Struct("!BI")   # client flags, verify result


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY v2 header (or a header cannot be encoded)."""


@dataclass(frozen=True)
class ProxyHeader:
    command: str = "PROXY"                    # "PROXY" | "LOCAL"
    family: str = "UNSPEC"                    # "TCP4" | "TCP6" | "UNSPEC"
    src: tuple[str, int] | None = None        # client address, port
    dst: tuple[str, int] | None = None        # address, port the client connected to
    authority: str | None = None              # SNI
    alpn: str | None = None
    tls_version: str | None = None            # "TLSv1.3"
    tls_cipher: str | None = None             # "TLS_AES_256_GCM_SHA384"
    client_cert_subject: str | None = None    # CN of the verified client certificate (mTLS), SSL sub-TLV 0x22;
                                              # decoded only with PP2_CLIENT_CERT_CONN and verify = 0

    @property
    def is_tls(self) -> bool:
        return any(v is not None for v in (self.tls_version, self.tls_cipher, self.client_cert_subject))


# --------------------------------------------------------------------------- encode

def encode(header: ProxyHeader) -> bytes:
    """The header's bytes. Raises ProxyProtocolError for a header that cannot be represented."""
    if header.command not in _COMMAND_CODES:
        raise ProxyProtocolError(f"unknown command {header.command!r}")
    if header.family not in _FAMILY_CODES:
        raise ProxyProtocolError(f"unknown family {header.family!r}")
    family_code, _ = _FAMILY_CODES[header.family]
    has_addresses = header.src is not None or header.dst is not None
    if header.command == "LOCAL" and (header.family != "UNSPEC" or has_addresses):
        # LOCAL means "not a proxied connection": the receiver uses the real endpoints.
        raise ProxyProtocolError("a LOCAL header carries no addresses (family must be UNSPEC)")
    if header.family == "UNSPEC":
        if has_addresses:
            raise ProxyProtocolError("family UNSPEC carries no addresses")
        body = b""
    else:
        if header.src is None or header.dst is None:
            raise ProxyProtocolError(f"family {header.family} needs both src and dst")
        version = 4 if header.family == "TCP4" else 6
        src_ip, src_port = _ip_and_port(header.src, version, "src")
        dst_ip, dst_port = _ip_and_port(header.dst, version, "dst")
        body = src_ip + dst_ip + struct.pack("!HH", src_port, dst_port)

    tlvs = bytearray()
    if header.alpn is not None:
        tlvs += _tlv(PP2_TYPE_ALPN, _ascii(header.alpn, "alpn"))
    if header.authority is not None:
        tlvs += _tlv(PP2_TYPE_AUTHORITY, header.authority.encode("utf-8"))
    if header.is_tls:
        client = PP2_CLIENT_SSL
        subs = bytearray()
        if header.tls_version is not None:
            subs += _tlv(PP2_SUBTYPE_SSL_VERSION, _ascii(header.tls_version, "tls_version"))
        if header.client_cert_subject is not None:
            client |= PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
            subs += _tlv(PP2_SUBTYPE_SSL_CN, header.client_cert_subject.encode("utf-8"))
        if header.tls_cipher is not None:
            subs += _tlv(PP2_SUBTYPE_SSL_CIPHER, _ascii(header.tls_cipher, "tls_cipher"))
        # verify = 0 means "presented a certificate and it verified"; without one it is non-zero.
        verify = 0 if header.client_cert_subject is not None else 1
        tlvs += _tlv(PP2_TYPE_SSL, _SSL_HEAD.pack(client, verify) + subs)

    payload_length = len(body) + len(tlvs)
    if payload_length > MAX_PAYLOAD:
        raise ProxyProtocolError(f"header payload of {payload_length} bytes exceeds {MAX_PAYLOAD}")
    ver_cmd = (_VERSION << 4) | _COMMAND_CODES[header.command]
    return SIGNATURE + struct.pack("!BBH", ver_cmd, family_code, payload_length) + body + tlvs


def _ip_and_port(addr: tuple[str, int], version: int, what: str) -> tuple[bytes, int]:
    try:
        # inet_pton takes exactly the plain textual forms (no zone, no leading zeros); anything
        # else goes through ipaddress for the exact reason it is refused, or for its packed form.
        packed = socket.inet_pton(socket.AF_INET if version == 4 else socket.AF_INET6, addr[0])
    except (OSError, TypeError):
        packed = _packed_slow(addr[0], version, what)
    port = addr[1]
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ProxyProtocolError(f"{what} port {port!r} out of range 0-65535")
    return packed, port


def _packed_slow(text: str, version: int, what: str) -> bytes:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"{what} {text!r} is not an IP address") from None
    if ip.version != version:
        raise ProxyProtocolError(f"{what} {text} is not an IPv{version} address")
    return ip.packed


def _ascii(text: str, what: str) -> bytes:
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        raise ProxyProtocolError(f"{what} {text!r} is not ASCII") from None


def _tlv(kind: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ProxyProtocolError(f"TLV 0x{kind:02x} value too long ({len(value)} bytes)")
    return _TLV_HEAD.pack(kind, len(value)) + value


# --------------------------------------------------------------------------- decode

def decode(buf: bytes | bytearray | memoryview) -> tuple[ProxyHeader, int] | None:
    """Decode a header from the start of `buf`.

    Returns None while more bytes are needed, `(header, consumed)` once the whole header is there
    (the bytes after `consumed` are the proxied stream), and raises ProxyProtocolError as soon as
    the bytes cannot be a valid header.
    """
    # A copy of at most MAX_HEADER bytes: no memoryview is kept on the caller's buffer (a live
    # export would stop the caller from resizing its bytearray), and slicing below stays cheap.
    data = bytes(buf[:MAX_HEADER])
    seen = data[:len(SIGNATURE)]
    if not SIGNATURE.startswith(seen):
        if seen.startswith(b"PROXY"[:len(seen)]):
            raise ProxyProtocolError("PROXY protocol v1 (text) header; only v2 is accepted")
        raise ProxyProtocolError("not a PROXY protocol v2 header (bad signature)")
    if len(data) > 12:
        ver_cmd = data[12]
        if ver_cmd >> 4 != _VERSION:
            raise ProxyProtocolError(f"unsupported PROXY protocol version {ver_cmd >> 4} (expected 2)")
        if ver_cmd & 0x0F not in _COMMANDS:
            raise ProxyProtocolError(f"unknown PROXY v2 command 0x{ver_cmd & 0x0F:x}")
    if len(data) > 13 and data[13] not in _FAMILIES:
        raise ProxyProtocolError(f"unsupported address family/transport 0x{data[13]:02x} "
                                 "(only TCP4 0x11, TCP6 0x21, UNSPEC 0x00)")
    if len(data) < FIXED_LENGTH:
        return None
    command = _COMMANDS[data[12] & 0x0F]
    family, address_length = _FAMILIES[data[13]]
    (payload_length,) = struct.unpack_from("!H", data, 14)
    if payload_length > MAX_PAYLOAD:
        raise ProxyProtocolError(f"header length {payload_length} exceeds the limit of {MAX_PAYLOAD}")
    if payload_length < address_length:
        raise ProxyProtocolError(f"header length {payload_length} too short for {family} "
                                 f"addresses ({address_length} bytes)")
    end = FIXED_LENGTH + payload_length
    if len(data) < end:
        return None

    src = dst = None
    if address_length and command == "PROXY":
        # A LOCAL header's addresses are to be ignored (section 2.2): skip them.
        src, dst = _addresses(data[FIXED_LENGTH:FIXED_LENGTH + address_length], family)
    tlvs = _parse_tlvs(data[FIXED_LENGTH + address_length:end], "TLV")

    alpn = authority = tls_version = tls_cipher = client_cn = None
    if PP2_TYPE_ALPN in tlvs:
        alpn = _text(tlvs[PP2_TYPE_ALPN], "ascii", "ALPN")
    if PP2_TYPE_AUTHORITY in tlvs:
        authority = _text(tlvs[PP2_TYPE_AUTHORITY], "utf-8", "AUTHORITY")
    if PP2_TYPE_SSL in tlvs:
        ssl_value = tlvs[PP2_TYPE_SSL]
        if len(ssl_value) < _SSL_HEAD.size:
            raise ProxyProtocolError(f"SSL TLV of {len(ssl_value)} bytes is shorter than its 5-byte head")
        client_flags, verify = _SSL_HEAD.unpack_from(ssl_value)
        subs = _parse_tlvs(ssl_value[_SSL_HEAD.size:], "SSL sub-TLV")
        if PP2_SUBTYPE_SSL_VERSION in subs:
            tls_version = _text(subs[PP2_SUBTYPE_SSL_VERSION], "ascii", "SSL version")
        if PP2_SUBTYPE_SSL_CIPHER in subs:
            tls_cipher = _text(subs[PP2_SUBTYPE_SSL_CIPHER], "ascii", "SSL cipher")
        # A subject counts only when the header says a certificate came on this connection and
        # verified (verify = 0): a CN beside any other word is no client identity.
        if PP2_SUBTYPE_SSL_CN in subs and client_flags & PP2_CLIENT_CERT_CONN and verify == 0:
            client_cn = _text(subs[PP2_SUBTYPE_SSL_CN], "utf-8", "SSL CN")
    header = ProxyHeader(command=command, family=family, src=src, dst=dst, authority=authority, alpn=alpn,
                         tls_version=tls_version, tls_cipher=tls_cipher, client_cert_subject=client_cn)
    return header, end


def _addresses(block: bytes, family: str) -> tuple[tuple[str, int], tuple[str, int]]:
    size = 4 if family == "TCP4" else 16
    make = ipaddress.IPv4Address if family == "TCP4" else ipaddress.IPv6Address
    src_port, dst_port = struct.unpack_from("!HH", block, 2 * size)
    return (str(make(block[:size])), src_port), (str(make(block[size:2 * size])), dst_port)


def _parse_tlvs(data: bytes, what: str) -> dict[int, bytes]:
    """type -> value. Unknown types are kept (and ignored by the caller); a repeated type that we
    interpret would be ambiguous, so it is an error."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        if len(data) - pos < _TLV_HEAD.size:
            raise ProxyProtocolError(f"truncated {what}: {len(data) - pos} stray bytes at the end")
        kind, length = _TLV_HEAD.unpack_from(data, pos)
        pos += _TLV_HEAD.size
        if pos + length > len(data):
            raise ProxyProtocolError(f"truncated {what} 0x{kind:02x}: length {length}, "
                                     f"only {len(data) - pos} bytes left")
        if kind in out and kind in _INTERPRETED:
            raise ProxyProtocolError(f"{what} 0x{kind:02x} appears twice")
        out[kind] = data[pos:pos + length]
        pos += length
    return out


_INTERPRETED = {PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_SSL,
                PP2_SUBTYPE_SSL_VERSION, PP2_SUBTYPE_SSL_CN, PP2_SUBTYPE_SSL_CIPHER}


def _text(value: bytes, encoding: str, what: str) -> str:
    try:
        return value.decode(encoding)
    except UnicodeDecodeError:
        raise ProxyProtocolError(f"{what} TLV is not valid {encoding}") from None


# "Not a relayed connection" (the sender's own, e.g. a health check): the receiver takes the
# socket's addresses.
LOCAL_HEADER = encode(ProxyHeader(command="LOCAL"))
