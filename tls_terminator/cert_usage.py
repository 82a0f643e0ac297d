"""Whether a certificate may be served by a TLS server at all, pure.

A CA certificate is never one: with the private key of a CA the terminator could sign any name,
so a CA key in a certs_dir (the development CA's, say) must fail loudly rather than be served.
"""
from __future__ import annotations

from cryptography import x509


def _extension(cert: x509.Certificate, kind):
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def unfit_for_serving(cert: x509.Certificate) -> str | None:
    """Why `cert` cannot be a TLS server's certificate; None when it can."""
    usage = _extension(cert, x509.KeyUsage)
    if usage is None:
        return None        # no limits (`openssl req -x509` makes such self-signed certificates)
    constraints = _extension(cert, x509.BasicConstraints)
    if usage.key_cert_sign and constraints is not None and constraints.ca:
        return ("a CA certificate (it issues certificates: serve one it issued, and keep its key "
                "out of the certificate files)")
    if not usage.digital_signature:
        # Every key exchange the terminator offers (ECDHE, TLS 1.3) has the server sign the handshake.
        return "its keyUsage does not allow digitalSignature, which every handshake the terminator offers needs"
    return None
