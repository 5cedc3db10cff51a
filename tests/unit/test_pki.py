"""The lab CA (lab/pki.py): identities kept across runs, a growing fleet, revocation, reissue,
and the certificates the acceptance tests need (expired, from another CA, revoked)."""
from __future__ import annotations

import datetime as dt
import ssl
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fotalab.lab.pki import TLS_SERVER, LabCA
from fotalab.tlsfiles import TlsFiles, TlsSetupError, peer_identity


def cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def crl_serials(ca: LabCA) -> set[int]:
    return {r.serial_number for r in x509.load_pem_x509_crl(ca.crl_path.read_bytes())}


@pytest.fixture
def ca(tmp_path) -> LabCA:
    lab = LabCA(tmp_path / "credentials")
    lab.ensure_identities(["device-1", "device-2", "fota-server"])
    return lab


def test_identities_are_issued_by_the_lab_ca_with_their_name_and_purpose(ca):
    root = cert(ca.ca_cert_path)
    device = cert(ca.identity("device-1").cert)
    assert device.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "device-1"
    assert device.issuer == root.subject
    device.verify_directly_issued_by(root)
    eku = device.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    server = cert(ca.identity(TLS_SERVER).cert)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"mosquitto", "server", "link", "localhost"} <= set(sans.get_values_for_type(x509.DNSName))
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}


def test_private_keys_are_readable_by_their_owner_only_and_each_identity_has_its_own_directory(ca):
    for name in ("device-1", "device-2", "fota-server", TLS_SERVER):
        identity = ca.identity(name)
        assert stat.S_IMODE(identity.key.stat().st_mode) == 0o600
        assert sorted(p.name for p in identity.directory.iterdir()) == (
            ["ca.pem", "cert.pem", "crl.pem", "key.pem"] if name in (TLS_SERVER, "fota-server")
            else ["ca.pem", "cert.pem", "key.pem"])
    assert stat.S_IMODE((ca.directory / "ca-private").stat().st_mode) == 0o700
    assert not list(ca.identity("device-1").directory.glob("*ca.key*"))


def test_a_second_run_keeps_every_certificate_and_a_grown_fleet_gets_new_ones(ca):
    before = {n: ca.identity(n).cert.read_bytes() for n in ("device-1", "device-2", "fota-server", TLS_SERVER)}
    ca_before = ca.ca_cert_path.read_bytes()
    assert ca.ensure_identities(["device-1", "device-2", "fota-server"]) == []
    assert ca.ensure_identities(["device-1", "device-2", "device-3", "fota-server"]) == ["device-3"]
    assert {n: ca.identity(n).cert.read_bytes() for n in before} == before
    assert ca.ca_cert_path.read_bytes() == ca_before
    cert(ca.identity("device-3").cert).verify_directly_issued_by(cert(ca.ca_cert_path))


def test_revoke_lists_the_serial_in_the_crl_everywhere_and_reissue_gives_a_new_certificate(ca):
    old = cert(ca.identity("device-1").cert).serial_number
    assert ca.revoke("device-1") == old
    assert crl_serials(ca) == {old}
    assert {r.serial_number for r in x509.load_pem_x509_crl(ca.identity(TLS_SERVER).crl.read_bytes())} == {old}
    x509.load_pem_x509_crl(ca.crl_path.read_bytes()).is_signature_valid(cert(ca.ca_cert_path).public_key())
    ca.reissue("device-1")
    new = cert(ca.identity("device-1").cert).serial_number
    assert new != old and ca.serial("device-1") == new
    assert crl_serials(ca) == {old}          # the old one stays revoked, the new one is good
    ca.reissue("device-2")                   # reissue of a good certificate revokes the old one too
    assert len(crl_serials(ca)) == 2
    with pytest.raises(KeyError, match="provision it first"):
        ca.revoke("device-9")


def test_expired_and_foreign_certificates_can_be_made_for_the_acceptance_tests(ca, tmp_path):
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    expired = ca.issue("device-old", not_before=past - dt.timedelta(days=1), not_after=past)
    assert cert(expired.cert).not_valid_after_utc < dt.datetime.now(dt.UTC)
    foreign = LabCA(tmp_path / "elsewhere", name="another CA")
    foreign.ensure_identities(["device-1"])
    assert cert(foreign.identity("device-1").cert).issuer != cert(ca.ca_cert_path).subject


def test_tls_files_build_contexts_and_name_the_missing_file(ca, tmp_path):
    device = ca.identity("device-1")
    files = TlsFiles(device.ca, device.cert, device.key)
    assert isinstance(files.client_context(), ssl.SSLContext)
    server = ca.identity(TLS_SERVER)
    context = TlsFiles(server.ca, server.cert, server.key).server_context(crl=server.crl)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    with pytest.raises(TlsSetupError, match=r"FOTA_TLS_KEY=.*nowhere.pem.*re-provision"):
        TlsFiles(device.ca, device.cert, tmp_path / "nowhere.pem").client_context()
    assert peer_identity({"subject": ((("commonName", "device-1"),),)}) == "device-1"
    assert peer_identity(None) is None


def test_the_acl_denies_every_topic_to_an_identity_whose_current_certificate_is_revoked(ca):
    from fotalab.lab.provision import Credentials
    ca.revoke("device-1")
    assert ca.revoked_identities() == ["device-1"]
    Credentials(ca.directory).provision(["device-1", "device-2"])
    assert "user device-1\ntopic deny #\n" in (ca.directory / "acl").read_text()
    ca.reissue("device-1")
    assert ca.revoked_identities() == []
    Credentials(ca.directory).provision(["device-1", "device-2"])
    assert "topic deny" not in (ca.directory / "acl").read_text()


def test_fota_provision_tls_makes_the_ca_and_keeps_it(tmp_path, capsys):
    from fotalab.lab.provision import main
    assert main(["--directory", str(tmp_path), "--fleet-size", "2", "--tls"]) == 0
    made = "new certificates: tls-server, fota-server, fota-health, device-1, device-2, fota-cli"
    assert made in capsys.readouterr().out
    first = (tmp_path / "device-1" / "cert.pem").read_bytes()
    assert main(["--directory", str(tmp_path), "--fleet-size", "3", "--tls"]) == 0
    assert "new certificates: device-3" in capsys.readouterr().out
    assert (tmp_path / "device-1" / "cert.pem").read_bytes() == first
    assert main(["--directory", str(tmp_path / "plain"), "--fleet-size", "1"]) == 0
    assert not (tmp_path / "plain" / "ca-private").exists()


def test_the_broker_listens_for_tls_only_unless_the_plaintext_lab_is_asked_for(tmp_path, monkeypatch, capsys):
    from fotalab.lab.provision import main
    listeners = tmp_path / "listeners" / "lab.conf"
    assert main(["--directory", str(tmp_path), "--fleet-size", "1", "--tls"]) == 0
    text = listeners.read_text()
    assert "listener 8883" in text and "require_certificate true" in text and "listener 1883" not in text
    assert "crlfile /mosquitto/credentials/tls-server/crl.pem" in text
    monkeypatch.setenv("FOTA_PLAINTEXT", "1")
    assert main(["--directory", str(tmp_path), "--fleet-size", "1", "--tls"]) == 0
    assert "listener 1883" in listeners.read_text() and "listener 8883" in listeners.read_text()
    monkeypatch.delenv("FOTA_PLAINTEXT")
    assert main(["--directory", str(tmp_path / "plain"), "--fleet-size", "1"]) == 0
    assert "listener 1883" in (tmp_path / "plain" / "listeners" / "lab.conf").read_text()
    assert "listener 8883" not in (tmp_path / "plain" / "listeners" / "lab.conf").read_text()


def test_each_identity_keeps_its_password_beside_its_certificate_and_the_front_door_secret_is_kept(tmp_path):
    from fotalab.lab.provision import FRONTDOOR_SECRET, main
    assert main(["--directory", str(tmp_path), "--fleet-size", "1", "--tls"]) == 0
    device = tmp_path / "device-1"
    assert {p.name for p in device.iterdir()} >= {"password", "ca.pem", "cert.pem", "key.pem"}
    assert stat.S_IMODE((device / "password").stat().st_mode) == 0o600
    door, server = tmp_path / "fota-frontdoor" / FRONTDOOR_SECRET, tmp_path / "fota-server" / FRONTDOOR_SECRET
    secret = door.read_text()
    assert len(secret.strip()) >= 32 and server.read_text() == secret
    assert stat.S_IMODE(door.stat().st_mode) == stat.S_IMODE(server.stat().st_mode) == 0o600
    assert main(["--directory", str(tmp_path), "--fleet-size", "1", "--tls"]) == 0
    assert door.read_text() == server.read_text() == secret
    assert (tmp_path / "passwd").read_text().startswith("device-1:$7$")


def test_a_server_certificate_without_a_name_the_lab_now_serves_is_issued_again(tmp_path):
    ca = LabCA(tmp_path)
    ca.ensure_identities(["fota-server"], server_sans=("server", "localhost"))
    old = cert(ca.identity("fota-server").cert)
    assert ca.ensure_identities(["fota-server"]) == ["tls-server", "fota-server"]     # both serve TLS
    names = cert(ca.identity("fota-server").cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "frontdoor" in names.value.get_values_for_type(x509.DNSName)
    assert cert(ca.identity("fota-server").cert).serial_number != old.serial_number
    assert ca.ensure_identities(["fota-server"]) == []


def test_a_reprovisioned_certificate_is_loaded_into_the_same_client_context(ca):
    from fotalab.tlsfiles import ReloadingIdentity
    files = ca.identity("device-1")
    identity = ReloadingIdentity(TlsFiles(files.ca, files.cert, files.key))
    context = identity.context
    assert identity.refresh() is False                        # nothing changed
    ca.reissue("device-1")
    key = ca.identity("device-1").key
    good = key.read_bytes()
    key.write_bytes(b"half-written")                          # caught between the key and the certificate
    assert identity.refresh() is False
    key.write_bytes(good)
    assert identity.refresh() is True and identity.context is context
    assert identity.refresh() is False
