"""The lab's certificate authority: who may speak MQTT over TLS and HTTPS, and who no longer may.

One EC P-256 CA, made once and kept. It issues
  - server certificates (serverAuth and clientAuth; SANs: the compose service names the broker
    and the update server are reached by, `localhost`, `127.0.0.1`): the broker's (`tls-server`)
    and the update server's (`fota-server`, which is also its MQTT identity), each key with
    its one owner;
  - a client certificate per identity (CN = the identity, clientAuth): each device (`device-N`),
    the update server's MQTT client (`fota-server`), the broker's healthcheck (`fota-health`),
    the operator's CLI (`fota-cli`);
  - a CRL, signed by the CA, listing every revoked certificate's serial.

Layout under the credentials directory (one directory per identity, so a container can mount
its own and nobody else's; the CA's key never leaves `ca-private/`):

    ca-private/ca.key          the CA's private key (0600, the provisioner only)
    ca-private/issued.json     identity -> current serial, and the revoked serials
    public/ca.pem, crl.pem     the CA certificate and the current CRL (world-readable)
    <identity>/ca.pem          the CA certificate, to verify the other side
    <identity>/cert.pem        the identity's certificate
    <identity>/key.pem         its private key (0600, owned by the identity's process)
    <identity>/crl.pem         server identities only: the CRL they check clients against

Idempotent: existing certificates are kept (a second run changes nothing), identities added
when the fleet grows get new certificates. `revoke` adds an identity's current certificate to
the CRL and rewrites every copy of it; `reissue` gives the identity a new key and certificate
(the old one stays revoked).
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TLS_SERVER = "tls-server"        # the broker's certificate
UPDATE_SERVER = "fota-server"    # the update server: its HTTPS certificate and its MQTT identity
FRONTDOOR = "fota-frontdoor"     # the front door (nginx): the HTTPS certificate devices and browsers see
CLI = "fota-cli"
# the lab's tools on the host (chaos, the tests): the server's rights under an identity of their own,
# since the broker forces a client id to its identity and the server's session must stay the server's
TOOLS = "fota-tools"
WATCH = "fota-watch"     # a person's subscription to the fleet's topics (mosquitto_sub): read only
SERVER_NAMES = ("mosquitto", "server", "frontdoor", "link", "localhost")
SERVER_IPS = ("127.0.0.1",)
CA_FILE, CERT_FILE, KEY_FILE, CRL_FILE = "ca.pem", "cert.pem", "key.pem", "crl.pem"
CA_DAYS, CERT_DAYS, CRL_DAYS = 3650, 825, 365
PRIVATE, PUBLIC = "ca-private", "public"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int, owner: int | None = None) -> None:
    """Atomically, with `mode`; chowned to `owner` when running as root."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, mode)
    if owner is not None and os.geteuid() == 0:
        os.chown(tmp, owner, owner)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Identity:
    """Where one identity's TLS files are: what FOTA_TLS_CA, FOTA_TLS_CERT, FOTA_TLS_KEY name."""
    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / CA_FILE

    @property
    def cert(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def key(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def crl(self) -> Path:
        return self.directory / CRL_FILE

    def env(self) -> dict[str, str]:
        return {"FOTA_TLS_CA": str(self.ca), "FOTA_TLS_CERT": str(self.cert), "FOTA_TLS_KEY": str(self.key)}


@dataclass
class LabCA:
    """The CA under `directory`. `owners` maps an identity to the uid its key belongs to (as root)."""
    directory: Path
    owners: Mapping[str, int] = field(default_factory=dict)
    name: str = "fota-lab CA"

    # --- the CA itself ---------------------------------------------------------------------------
    @property
    def _key_path(self) -> Path:
        return self.directory / PRIVATE / "ca.key"

    @property
    def _ledger_path(self) -> Path:
        return self.directory / PRIVATE / "issued.json"

    @property
    def ca_cert_path(self) -> Path:
        return self.directory / PUBLIC / CA_FILE

    @property
    def crl_path(self) -> Path:
        return self.directory / PUBLIC / CRL_FILE

    def identity(self, name: str) -> Identity:
        return Identity(self.directory / name)

    def ensure(self) -> bool:
        """Make the CA key, certificate and an empty CRL unless they exist; True if made now."""
        if self._key_path.exists() and self.ca_cert_path.exists():
            return False
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                             crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        _write(self._key_path, _pem_key(key), 0o600)
        (self.directory / PRIVATE).chmod(0o700)
        _write(self.ca_cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        self._save_ledger({"issued": {}, "revoked": []})
        self.write_crl()
        return True

    def _ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = serialization.load_pem_private_key(self._key_path.read_bytes(), password=None)
        return key, x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())

    def _ledger(self) -> dict:
        try:
            return json.loads(self._ledger_path.read_text())
        except FileNotFoundError:
            return {"issued": {}, "revoked": []}

    def _save_ledger(self, ledger: dict) -> None:
        _write(self._ledger_path, json.dumps(ledger, indent=1, sort_keys=True).encode(), 0o600)

    # --- issuing ---------------------------------------------------------------------------------
    def issue(self, name: str, *, server: bool = False, sans: Iterable[str] = (),
              not_before: dt.datetime | None = None, not_after: dt.datetime | None = None) -> Identity:
        """A new key and certificate for `name` (replacing any it had), written to its directory.
        `not_before`/`not_after` default to now and CERT_DAYS from now (tests make expired ones)."""
        ca_key, ca_cert = self._ca()
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else \
            [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(ca_cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before or now - dt.timedelta(minutes=5))
                   .not_valid_after(not_after or now + dt.timedelta(days=CERT_DAYS))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        names = list(sans)
        if names:
            general = [x509.IPAddress(ipaddress.ip_address(n)) if _is_ip(n) else x509.DNSName(n) for n in names]
            builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        identity = self.identity(name)
        owner = self.owners.get(name)
        identity.directory.mkdir(parents=True, exist_ok=True)
        _write(identity.key, _pem_key(key), 0o600, owner)
        _write(identity.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644, owner)
        _write(identity.ca, self.ca_cert_path.read_bytes(), 0o644, owner)
        if server:
            _write(identity.crl, self.crl_path.read_bytes(), 0o644, owner)
        ledger = self._ledger()
        ledger["issued"][name] = {"serial": cert.serial_number, "server": server}
        self._save_ledger(ledger)
        return identity

    def ensure_identities(self, clients: Iterable[str], *, server_sans: Iterable[str] | None = None,
                          servers: Iterable[str] = (UPDATE_SERVER, FRONTDOOR)) -> list[str]:
        """Make the CA and every identity that lacks a certificate; returns those issued now.
        Existing certificates are kept, so a fleet that grows only gets the new ones. `servers`
        among `clients` also serve TLS (the update server: HTTPS, and MQTT as a client)."""
        self.ensure()
        issued = self._ledger()["issued"]
        sans = tuple(server_sans or (*SERVER_NAMES, *SERVER_IPS))
        created = []
        for name in (TLS_SERVER, *clients):
            serves = name == TLS_SERVER or name in servers
            if name not in issued or not self.identity(name).cert.exists() or \
                    (serves and not set(sans) <= self._sans(name)):      # a server name added since
                self.issue(name, server=serves, sans=sans if serves else ())
                created.append(name)
        self.write_crl()
        return created

    def _sans(self, name: str) -> set[str]:
        cert = x509.load_pem_x509_certificate(self.identity(name).cert.read_bytes())
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return set()
        return {str(n.value) for n in names}

    # --- revocation ------------------------------------------------------------------------------
    def serial(self, name: str) -> int:
        entry = self._ledger()["issued"].get(name)
        if entry is None:
            raise KeyError(f"{name}: no certificate was issued to it; provision it first (fota-provision)")
        return int(entry["serial"])

    def revoked(self) -> set[int]:
        return {int(s) for s in self._ledger()["revoked"]}

    def revoked_identities(self) -> list[str]:
        """Identities whose current certificate is revoked (not yet reissued)."""
        ledger = self._ledger()
        gone = {int(s) for s in ledger["revoked"]}
        return sorted(name for name, entry in ledger["issued"].items() if int(entry["serial"]) in gone)

    def revoke(self, name: str) -> int:
        """Put `name`'s current certificate on the CRL and rewrite every copy; its serial."""
        serial = self.serial(name)
        ledger = self._ledger()
        if serial not in ledger["revoked"]:
            ledger["revoked"].append(serial)
            self._save_ledger(ledger)
        self.write_crl()
        return serial

    def reissue(self, name: str) -> Identity:
        """A new key and certificate for `name`; the old certificate is revoked (if it was not)."""
        entry = self._ledger()["issued"].get(name, {})
        if entry:
            self.revoke(name)
        identity = self.issue(name, server=bool(entry.get("server")))
        self.write_crl()
        return identity

    def write_crl(self) -> bytes:
        """Sign the CRL of every revoked serial; write it to public/ and to each server identity."""
        ca_key, ca_cert = self._ca()
        now = _now()
        builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
                   .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=CRL_DAYS)))
        for serial in sorted(self.revoked()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
        pem = builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        _write(self.crl_path, pem, 0o644)
        for name, entry in self._ledger()["issued"].items():
            if entry.get("server") and self.identity(name).directory.exists():
                _write(self.identity(name).crl, pem, 0o644, self.owners.get(name))
        return pem


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def mosquitto_tls_listener(port: int, server: Identity, *, bind: str = "") -> str:
    """The broker's TLS listener: a client certificate from the lab CA is required and checked
    against the CRL; the identity is the certificate's CN (the ACL's %u), and the client id is
    forced to it, so no client can take another's id or its persistent session."""
    return "\n".join([
        f"listener {port} {bind}".rstrip(),
        f"cafile {server.ca}", f"certfile {server.cert}", f"keyfile {server.key}", f"crlfile {server.crl}",
        "require_certificate true", "use_identity_as_username true",
        "use_username_as_clientid true", ""])
