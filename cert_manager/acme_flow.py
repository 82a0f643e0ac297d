"""One ACME (RFC 8555) conversation with certbot's `acme` library: the account, then an order for
one name, validated by http-01 through the router, finalized, the chain downloaded.

Blocking (requests underneath): the daemon runs it in a thread, one order at a time. A session
is dropped after any failure and a fresh one made for the next attempt (the CA may have been
restarted and forgotten the account).
"""
from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from pathlib import Path

import josepy as jose
from acme import challenges, client, crypto_util, errors, messages

from cert_manager import files
from frontgate import dev_ca
from frontgate.config.cert_manager import CertManagerConfig

log = logging.getLogger("cert-manager")

NONCE_ATTEMPTS = 10          # a POST is tried this often while the CA calls our nonce bad
USER_AGENT = "frontgate-cert-manager"


class PatientNetwork(client.ClientNetwork):
    """The library's network, with two things it lacks: a POST is retried on every badNonce
    (RFC 8555 6.5: a client MUST retry; the library does it once, and Pebble rejects 5% of nonces
    by default, so two in a row happen), and the last error response's Retry-After is kept, for the
    back-off (the library raises the problem document without the headers)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.last_retry_after: str | None = None
        self.bad_nonces = 0

    def _send_request(self, method, url, *args, **kwargs):
        response = super()._send_request(method, url, *args, **kwargs)
        if response.status_code >= 400:
            self.last_retry_after = response.headers.get("Retry-After")
        return response

    def post(self, *args, **kwargs):
        for attempt in range(1, NONCE_ATTEMPTS + 1):
            try:
                return self._post_once(*args, **dict(kwargs))
            except messages.Error as e:
                if e.code != "badNonce" or attempt == NONCE_ATTEMPTS:
                    raise
                self.bad_nonces += 1
                log.debug("badNonce from the CA; trying again (%d)", attempt)
        raise AssertionError("unreachable")


@dataclass
class Issued:
    fullchain_pem: bytes
    key: object              # the certificate's private key (cryptography)


class Session:
    """An ACME client logged in with the account key (registered, or found, at the start)."""

    def __init__(self, cfg: CertManagerConfig):
        self.cfg = cfg
        key = files.account_key(cfg.account_key)
        self.jwk = jose.JWKEC(key=key)
        self.net = PatientNetwork(self.jwk, alg=jose.ES256, user_agent=USER_AGENT,
                                  verify_ssl=str(cfg.ca_bundle) if cfg.ca_bundle else True)
        self.acme: client.ClientV2 | None = None

    def connect(self) -> None:
        """The directory, then the account: registered, or found by its key."""
        cfg = self.cfg
        directory = client.ClientV2.get_directory(cfg.directory_url, self.net)
        self.acme = client.ClientV2(directory, self.net)
        registration = messages.NewRegistration.from_data(terms_of_service_agreed=True)
        if cfg.contact:
            registration = registration.update(contact=cfg.contact)
        try:
            self.acme.new_account(registration)
        except errors.ConflictError as e:
            # This key has an account already: use it (its URL is the key id of every request).
            self.net.account = messages.RegistrationResource(uri=e.location, body=messages.Registration())

    def issue(self, name: str) -> Issued:
        """An order for `name`, validated by http-01 (the key authorization in the challenge
        directory, where the router answers the CA), finalized; the tokens are removed whatever
        the outcome."""
        key = files.new_key(self.cfg.key_type)
        csr = crypto_util.make_csr(dev_ca.key_pem(key), [name])
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=self.cfg.order_timeout)
        order = self.acme.new_order(csr)
        tokens: list[Path] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue            # the CA still holds an earlier validation of this name
                challenge = _http01(authz)
                response, validation = challenge.response_and_validation(self.jwk)
                tokens.append(files.put_token(self.cfg.challenge_dir, challenge.chall.encode("token"), validation))
                self.acme.answer_challenge(challenge, response)
            order = self.acme.poll_and_finalize(order, deadline)
        finally:
            for path in tokens:
                files.remove_token(path)
        return Issued(fullchain_pem=order.fullchain_pem.encode("ascii"), key=key)

    def renewal_window(self, fullchain_pem: bytes) -> tuple[float, float] | None:
        """When the CA's renewal information (ARI) says to renew, as a window of one moment (the
        library picks it at random inside the CA's window); None when the CA offers none."""
        when, _ = self.acme.renewal_time(fullchain_pem)
        if when is None:
            return None
        t = when.timestamp()
        return t, t


def _http01(authz: messages.AuthorizationResource) -> messages.ChallengeBody:
    for challenge in authz.body.challenges:
        if isinstance(challenge.chall, challenges.HTTP01):
            return challenge
    raise errors.Error(f"the CA offers no http-01 challenge for {authz.body.identifier.value}")


def describe(error: BaseException) -> str:
    """One line for the log, the state file and `frontgate certs`."""
    if isinstance(error, messages.Error):
        return f"{error.typ or error.code}: {error.detail or ''}".strip()
    if isinstance(error, errors.ValidationError):
        problems = [c.error.detail for a in error.failed_authzrs for c in a.body.challenges if c.error is not None]
        return "validation failed: " + "; ".join(p or "?" for p in problems)
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}" if type(error).__name__ not in text else text
