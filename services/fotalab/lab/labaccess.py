"""How the lab's tools on this machine (chaos, the e2e tests) reach a running lab: its server
through the front door and its broker, over TLS when the lab runs TLS, as `fota-tools` (the
server's rights under an identity of its own: the broker forces every client id to its
identity, so a tool using the server's would take over the server's own session).

The identity is read out of the broker's container (it mounts the credentials), its key written
0600 into a directory of ours; a lab without certificates (the Swarm stack) or run with
FOTA_PLAINTEXT=1 is reached in plaintext with the server's MQTT password instead.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import requests

from ..tlsfiles import PLAINTEXT, TlsFiles
from .fleetwatch import FleetWatcher
from .pki import CA_FILE, CERT_FILE, KEY_FILE, TOOLS
from .provision import BROKER_DIR, PASSWORD, SERVER

SERVER_DIR = f"/credentials/{SERVER}"     # where the server's container has its identity
TOOLS_DIR = f"{BROKER_DIR}/{TOOLS}"       # where the broker's container has the tools' identity


class Readable(Protocol):
    def read_file(self, name: str, path: str) -> str: ...


@dataclass(frozen=True)
class LabAccess:
    server_url: str
    mqtt_host: str
    mqtt_port: int
    tls: TlsFiles | None = None       # fota-tools' identity, for HTTPS and MQTT over TLS
    password: str = ""                # the plaintext lab's MQTT login as the server

    def session(self) -> requests.Session:
        """HTTP to the server: the lab CA verifies it, our certificate identifies us."""
        session = requests.Session()
        if self.tls:
            session.verify, session.cert = str(self.tls.ca), self.tls.requests_cert
            # REQUESTS_CA_BUNDLE (set on many machines) would override the session's verify: the
            # environment has nothing to say about a loopback lab
            session.trust_env = False
        return session

    def watcher(self) -> FleetWatcher:
        """The fleet's reports over MQTT, seen as the server sees them."""
        return FleetWatcher(self.mqtt_host, self.mqtt_port, username=SERVER, password=self.password, tls=self.tls)


def runs_tls(lab: Readable) -> bool:
    """Whether the lab's server holds a certificate and was not started with FOTA_PLAINTEXT=1."""
    try:
        lab.read_file("server", f"{SERVER_DIR}/{CERT_FILE}")
        environ = lab.read_file("server", "/proc/1/environ").split("\0")
    except (subprocess.CalledProcessError, LookupError):
        return False
    return f"{PLAINTEXT}=1" not in environ


def reach_plaintext(lab: Readable, server_url: str, mqtt_host: str, mqtt_port: int) -> LabAccess:
    """A lab without TLS, with the server's MQTT password."""
    try:
        password = lab.read_file("server", f"{SERVER_DIR}/{PASSWORD}")
    except (subprocess.CalledProcessError, LookupError):
        password = ""
    return LabAccess(server_url, mqtt_host, mqtt_port, password=password)


def reach(lab: Readable, host: str, server_port: int, mqtt_port: int, mqtts_port: int, directory: Path) -> LabAccess:
    """The lab at `host` (its published ports), with the tools' identity copied into `directory`."""
    if not runs_tls(lab):
        return reach_plaintext(lab, f"http://{host}:{server_port}", host, mqtt_port)
    directory.mkdir(parents=True, exist_ok=True)
    for name in (CA_FILE, CERT_FILE, KEY_FILE):
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(lab.read_file("mosquitto", f"{TOOLS_DIR}/{name}") + "\n")
    files = TlsFiles(ca=directory / CA_FILE, cert=directory / CERT_FILE, key=directory / KEY_FILE)
    return LabAccess(f"https://{host}:{server_port}", host, mqtts_port, tls=files)
