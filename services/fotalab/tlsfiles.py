"""TLS as every side of the lab uses it: which files an identity has (FOTA_TLS_CA, FOTA_TLS_CERT,
FOTA_TLS_KEY), the client and server SSL contexts built from them, and the peer's identity.

Shared by the device, the server, the lab's tools and the CLI (like protocol.py, it belongs to
no room). A verified peer's identity is its certificate's Common Name, as the broker's
use_identity_as_username has it. Every failure to load a file names the file and says what to
do: most often, provision the identity again (fota-provision).

FOTA_PLAINTEXT=1 is the lab without TLS (the attack workshop, docs/labs/05-attacks.md): every
side then ignores its TLS files, talks to the broker's plain port and to the server over http.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from .envconfig import ConfigError, Env

PLAINTEXT = "FOTA_PLAINTEXT"
MQTT_PORT, MQTTS_PORT = 1883, 8883
FIX = "re-provision the lab's credentials (fota-provision, or `scripts/lab up`), or point {var} at the right file"


@dataclass(frozen=True)
class TlsFiles:
    """One identity's TLS files; `ca` alone verifies servers, `cert`+`key` present the identity."""
    ca: Path
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def from_env(cls, env: Env | None = None) -> TlsFiles | None:
        """FOTA_TLS_CA (+ FOTA_TLS_CERT, FOTA_TLS_KEY), or None when FOTA_TLS_CA is unset or
        FOTA_PLAINTEXT is set (plaintext)."""
        env = env or Env()
        if env.flag(PLAINTEXT, False):
            return None
        ca = env.optional_path("FOTA_TLS_CA")
        cert, key = env.optional_path("FOTA_TLS_CERT"), env.optional_path("FOTA_TLS_KEY")
        if ca is None:
            if cert or key:
                raise ConfigError("FOTA_TLS_CERT/FOTA_TLS_KEY are set without FOTA_TLS_CA: set FOTA_TLS_CA to the "
                                  "lab CA's certificate (ca.pem) as well")
            return None
        if (cert is None) != (key is None):
            raise ConfigError("set both FOTA_TLS_CERT and FOTA_TLS_KEY (the identity's cert.pem and key.pem), "
                              "or neither")
        return cls(ca=ca, cert=cert, key=key)

    @property
    def requests_cert(self) -> tuple[str, str] | None:
        """What requests' `cert=` takes."""
        return (str(self.cert), str(self.key)) if self.cert and self.key else None

    def check(self) -> None:
        """Every named file is readable; otherwise a TlsSetupError naming it."""
        for var, path in (("FOTA_TLS_CA", self.ca), ("FOTA_TLS_CERT", self.cert), ("FOTA_TLS_KEY", self.key)):
            if path is not None:
                try:
                    path.read_bytes()
                except OSError as exc:
                    raise TlsSetupError(f"{var}={path}: cannot read it ({exc.strerror}); "
                                        + FIX.format(var=var)) from None

    def client_context(self) -> ssl.SSLContext:
        """Verifies the server against the lab CA (and its host name); presents our certificate."""
        self.check()
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load_chain(context)
        return context

    def server_context(self, *, crl: Path | None = None, require_client: bool = True) -> ssl.SSLContext:
        """Our certificate; clients verified against the lab CA (required unless told otherwise),
        their certificate checked against `crl` when given."""
        self.check()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL
        if crl is not None:
            try:
                context.load_verify_locations(cafile=str(crl))
            except (OSError, ssl.SSLError) as exc:
                raise TlsSetupError(f"CRL {crl}: cannot load it ({exc}); " + FIX.format(var="the CRL path")) from None
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        self._load_chain(context)
        return context

    def _load_chain(self, context: ssl.SSLContext) -> None:
        if self.cert and self.key:
            try:
                context.load_cert_chain(str(self.cert), str(self.key))
            except (OSError, ssl.SSLError) as exc:
                raise TlsSetupError(f"certificate {self.cert} with key {self.key}: cannot load them ({exc}); "
                                    + FIX.format(var="FOTA_TLS_CERT/FOTA_TLS_KEY")) from None


def mqtt_port(env: Env, tls: TlsFiles | None) -> int:
    """FOTA_MQTT_PORT, by default the broker's TLS port with TLS files and its plain one without."""
    return env.integer("FOTA_MQTT_PORT", MQTTS_PORT if tls else MQTT_PORT, minimum=1, maximum=65535)


def server_url(env: Env, name: str, default: str) -> str:
    """A server URL setting; under FOTA_PLAINTEXT an https:// one is used as http://, so one compose
    file serves both labs."""
    url = env.text(name, default)
    if env.flag(PLAINTEXT, False) and url.startswith("https://"):
        return "http://" + url.removeprefix("https://")
    return url


def file_stamp(path: Path | None) -> tuple[int, int, int] | None:
    """What changes when a file is rewritten, in place or replaced (how the CRL's and a
    certificate's readers notice a new one); None while it is absent."""
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


class ReloadingIdentity:
    """A client context whose certificate follows its files: after `fota device reprovision` the
    next connection presents the new certificate, without a restart (load_cert_chain on the same
    context replaces the chain; a pair caught half-written is tried again at the next refresh)."""

    def __init__(self, files: TlsFiles) -> None:
        self.files, self.context = files, files.client_context()
        self._stamp = self._files_stamp()

    def _files_stamp(self) -> tuple:
        return file_stamp(self.files.cert), file_stamp(self.files.key)

    def refresh(self) -> bool:
        """Load the certificate and key again if their files changed; True when it did."""
        stamp = self._files_stamp()
        if stamp == self._stamp:
            return False
        try:
            self.files._load_chain(self.context)
        except TlsSetupError:
            return False
        self._stamp = stamp
        return True


class TlsSetupError(ConfigError):
    """A TLS file is missing or unusable; the message names it and says how to fix it."""


def peer_identity(peercert: dict | None) -> str | None:
    """The Common Name of a verified peer certificate (ssl's getpeercert() form), or None."""
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def peer_serial(peercert: dict | None) -> int | None:
    serial = (peercert or {}).get("serialNumber")
    return int(serial, 16) if serial else None
