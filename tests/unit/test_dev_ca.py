"""frontgate/dev_ca.py: what the development CA issues, and when a development certificate is due."""
from __future__ import annotations

import datetime

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from frontgate import dev_ca
from tls_terminator.cert_usage import unfit_for_serving

NOW = datetime.datetime(2030, 6, 1, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)
HOSTS = ["localhost", "*.localhost", "maps.localhost", "*.coltrane.localhost"]


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return dev_ca.create(tmp_path_factory.mktemp("dev-ca"), now=NOW - 30 * DAY)


def leaf(ca, names=HOSTS, issued=NOW):
    return ca.issue(ec.generate_private_key(ec.SECP256R1()).public_key(), list(names), now=issued)


@pytest.mark.parametrize("san, host, covered", [
    (["maps.localhost"], "maps.localhost", True),
    (["MAPS.localhost"], "maps.LOCALHOST", True),
    (["*.localhost"], "maps.localhost", True),
    (["*.localhost"], "a.maps.localhost", False),         # one label only
    (["*.localhost"], "localhost", False),
    (["*.localhost"], "*.maps.localhost", False),         # a wildcard host needs its own wildcard
    (["*.maps.localhost"], "*.maps.localhost", True),
    (["localhost"], "other", False),
])
def test_covers(san, host, covered):
    assert dev_ca.covers(san, host) == covered


def test_the_leaf_is_a_365_day_server_certificate_of_the_ca(ca):
    cert = leaf(ca)
    assert ca.issued(cert) and cert.not_valid_before_utc == NOW - dev_ca.CLOCK_SKEW
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == 365 * DAY
    assert dev_ca.dns_names(cert) == HOSTS
    assert unfit_for_serving(cert) is None and unfit_for_serving(ca.cert) is not None
    assert dev_ca.from_frontgate(cert)


@pytest.mark.parametrize("issued, hosts, reason", [
    (NOW, HOSTS, None),
    (NOW - 300 * DAY, HOSTS, None),                              # 65 days left
    (NOW - 340 * DAY, HOSTS, "expiring in 24 days"),
    (NOW - 400 * DAY, HOSTS, "expiring in 0 days"),             # expired
    (NOW, HOSTS + ["x.localhost", "*.new.localhost", "app.test"], "not valid for *.new.localhost, app.test"),
])
def test_reissue_reason(ca, issued, hosts, reason):
    assert dev_ca.reissue_reason(leaf(ca, issued=issued), ca, hosts, now=NOW) == reason


def test_reissue_reason_leaves_an_operators_certificate_alone_and_replaces_another_cas(ca, tmp_path):
    operators = x509.load_pem_x509_certificate(trustme.CA().issue_cert("maps.localhost").cert_chain_pems[0].bytes())
    assert dev_ca.reissue_reason(operators, ca, ["app.test"], now=NOW + 3000 * DAY) is None
    other = dev_ca.create(tmp_path / "other", now=NOW)
    assert dev_ca.reissue_reason(leaf(other), ca, HOSTS, now=NOW) == "issued by another development CA"
    assert dev_ca.reissue_reason(leaf(other), None, HOSTS, now=NOW) == "issued by another development CA"


def test_a_leaf_never_outlives_its_ca_and_an_ending_ca_is_replaced(ca):
    late = NOW + (dev_ca.CA_VALID_DAYS - 100) * DAY
    assert leaf(ca, issued=late).not_valid_after_utc == ca.cert.not_valid_after_utc
    assert dev_ca.ending(ca, now=late) and not dev_ca.ending(ca, now=NOW)


def test_the_ca_files_and_describe(ca):
    assert (ca.directory / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (ca.directory / "ca.pem").stat().st_mode & 0o777 == 0o644
    assert dev_ca.load(ca.directory).cert == ca.cert
    row = dev_ca.describe(ca.directory, now=NOW)
    assert row["file"] == str(ca.directory / "ca.pem") and row["status"] == "valid"
    assert row["subject"].startswith("O=frontgate development,CN=frontgate development CA")
    assert row["days_left"] == dev_ca.CA_VALID_DAYS - 31          # made 30 days and an hour ago
    assert dev_ca.describe(ca.directory / "missing") is None
