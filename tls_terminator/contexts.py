"""The pyOpenSSL context for a set of certificates (one per key type), with the [tls] policy and,
for a client-certificate rule, the client CA list and verify mode."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from frontgate.client_auth import ClientAuthRule
from frontgate.config import TerminatorConfig, TlsPolicy
from tls_terminator.tls import new_context

VERIFY_MODES = {"required": SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, "optional": SSL.VERIFY_PEER}


def build_context(certs: Sequence[tuple[Sequence[x509.Certificate], object]], cfg: TerminatorConfig | None,
                  rule: ClientAuthRule | None = None, rule_index: int = 0) -> SSL.Context:
    """One context serving `certs` (one per key type), with the [tls] policy of `cfg` and, with
    `rule`, asking for a client certificate."""
    policy = cfg.tls if cfg is not None else TlsPolicy()
    ctx = new_context(policy, cfg.path if cfg is not None else "")
    for chain, key in certs:
        if len(certs) == 1 or len(chain) == 1:
            ctx.use_certificate(chain[0])
            for extra in chain[1:]:
                ctx.add_extra_chain_cert(extra)
        else:
            # Several key types with their own chains: only the chain-file call gives each
            # certificate its own chain (extra chain certs are shared by all of them).
            _use_chain(ctx, chain)
        ctx.use_privatekey(key)  # type: ignore[arg-type]
        ctx.check_privatekey()
    if rule is not None:
        ctx.load_verify_locations(str(rule.ca))
        ctx.set_client_ca_list([crypto.X509.from_cryptography(c).get_subject() for c in client_cas(rule.ca)])
        ctx.set_verify(VERIFY_MODES[rule.verify])
        # Sessions made without a client certificate must not resume here.
        ctx.set_session_id(f"frontgate-mtls-{rule_index}".encode())
    return ctx


def _use_chain(ctx: SSL.Context, chain: Sequence[x509.Certificate]) -> None:
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    try:
        with tempfile.NamedTemporaryFile(prefix="frontgate-chain-", suffix=".pem") as f:
            f.write(pem)
            f.flush()
            ctx.use_certificate_chain_file(f.name)
    except OSError:
        # No writable temporary directory (a bare chroot): the shared extra chain still serves
        # certificates whose chains have the same intermediates.
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)


def client_cas(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def ocsp_callback(conn: SSL.Connection, responses: dict[bytes, bytes]) -> bytes:
    # Runs after OpenSSL chose the certificate for this client: staple that one's response.
    cert = conn.get_certificate(as_cryptography=True)
    if cert is None:
        return b""
    return responses.get(cert.public_bytes(serialization.Encoding.DER), b"")
