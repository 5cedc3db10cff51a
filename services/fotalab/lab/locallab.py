"""The lab's services as local processes, without Docker: a real mosquitto, the real signer,
the real server under gunicorn and real device supervisors, killed with SIGKILL.

Used by the integration tests and by scripts/crash-sweep, which need hundreds of power cuts
in minutes.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from ..tlsfiles import TlsFiles
from .fleetwatch import FleetWatcher
from .pki import FRONTDOOR, TLS_SERVER, LabCA, mosquitto_tls_listener
from .provision import (
    FRONTDOOR_SECRET,
    SERVER,
    SIM_SECRET,
    Credentials,
    fleet_identities,
    frontdoor_secret,
    sim_device_id,
    sim_password,
)

LAB_RELEASES = """\
expires_days = 30
max_deltas = 5

[[hardware]]
id = "fotalab-m4"
arch = "thumb"
size = {size}
seed = 7

[[release]]
hardware = "fotalab-m4"
version = "1.0.0"
security_counter = 1

[[release]]
hardware = "fotalab-m4"
version = "2.0.0"
security_counter = 2

[[release]]
hardware = "fotalab-m4"
version = "2.1.0"
security_counter = 2
behaviour = "crash-at-boot"

[[release]]
hardware = "fotalab-m4"
version = "2.2.0"
security_counter = 2
behaviour = "hang"

[[release]]
hardware = "fotalab-m4"
version = "2.3.0"
security_counter = 2
behaviour = "selftest-fail"

[[release]]
hardware = "fotalab-m4"
version = "2.4.0"
security_counter = 2
behaviour = "crash-after"
behaviour_arg = 2
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.1)


def _start_http_service(module: str, env: dict[str, str], log: Path, url: str, what: str,
                        **tls) -> subprocess.Popen:
    """`python -m module`, its output in `log`, once its /healthz answers (`tls`: requests' verify/cert)."""
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}; see {log}")
        try:
            return requests.get(f"{url}/healthz", timeout=1, **tls).ok
        except requests.RequestException:
            return False
    wait_until(healthy, 20, what)
    return process


def _stop(process: subprocess.Popen | None) -> None:
    if process and process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class Broker:
    """mosquitto with the lab's authentication and ACL; devices are enrolled as they appear.
    With `tls`, a TLS listener on `tls_port` (lab CA certificates, identity = CN, CRL checked);
    `plaintext` keeps the password listener on `port`."""

    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    tls: bool = False
    plaintext: bool = True
    tls_port: int = field(default_factory=free_port)
    _enrolled: set = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def credentials(self) -> Path:
        return self.root / "credentials"

    def password_file(self, identity: str) -> Path:
        return Credentials(self.credentials).password_file(identity)

    @property
    def ca(self) -> LabCA:
        return LabCA(self.credentials)

    def tls_files(self, identity: str) -> TlsFiles:
        found = self.ca.identity(identity)
        return TlsFiles(found.ca, found.cert, found.key)

    def watcher(self, identity: str = SERVER) -> FleetWatcher:
        if not self.plaintext:
            return FleetWatcher("127.0.0.1", self.tls_port, tls=self.tls_files(identity))
        return FleetWatcher("127.0.0.1", self.port, username=identity,
                            password=Credentials(self.credentials).password(identity))

    def revoke(self, identity: str) -> None:
        """Revoke `identity`'s certificate: the CRL refuses its new connections, the ACL's deny
        cuts off the one it has; both take effect on the broker's reload (SIGHUP)."""
        with self._lock:
            self.ca.revoke(identity)
            Credentials(self.credentials).provision(sorted(self._enrolled))
            self.process.send_signal(signal.SIGHUP)

    def reissue(self, identity: str) -> None:
        with self._lock:
            self.ca.reissue(identity)
            Credentials(self.credentials).provision(sorted(self._enrolled))
            self.process.send_signal(signal.SIGHUP)

    def enroll(self, identity: str) -> None:
        """Give a new device its credential and make the running broker reload (SIGHUP)."""
        with self._lock:
            if identity in self._enrolled:
                return
            if self.tls:
                self.ca.ensure_identities([identity])
            if not self.plaintext:
                self._enrolled.add(identity)
                return
            Credentials(self.credentials).provision([identity])
            self.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while True:
                try:
                    self.watcher(identity).close()
                    break
                except ConnectionRefusedError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            self._enrolled.add(identity)

    def enroll_virtual(self, count: int, directory: Path) -> None:
        """Identities for `count` virtual devices of fota-fleetsim (their secret in `directory`)."""
        with self._lock:
            Credentials(self.credentials).provision(sorted(self._enrolled), sim_devices=count, sim_directory=directory)
            self.process.send_signal(signal.SIGHUP)
        secret = (directory / SIM_SECRET).read_text().strip().encode()
        probe = sim_device_id(count)
        deadline = time.monotonic() + 10
        while True:
            try:
                FleetWatcher("127.0.0.1", self.port, username=probe, password=sim_password(secret, probe)).close()
                return
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def start(self) -> Broker:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "mosquitto.conf"
        if self.tls:
            self.ca.ensure_identities(fleet_identities(0))
        Credentials(self.credentials).provision(fleet_identities(0))
        # started as root (CI), mosquitto would drop to its own user, which cannot read the test's files
        conf.write_text("allow_anonymous false\nlog_dest stdout\n"
                        f"{'user root' if os.geteuid() == 0 else ''}\n"
                        f"password_file {self.credentials}/passwd\nacl_file {self.credentials}/acl\n"
                        + (f"listener {self.port} 127.0.0.1\n" if self.plaintext else "")
                        + (mosquitto_tls_listener(self.tls_port, self.ca.identity(TLS_SERVER), bind="127.0.0.1")
                           if self.tls else ""))
        with (self.root / "mosquitto.log").open("ab") as log:
            self.process = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

        def accepting() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port if self.plaintext else self.tls_port),
                                         timeout=0.2).close()
                return True
            except OSError:
                return False
        wait_until(accepting, 10, "mosquitto")
        return self

    def stop(self) -> None:
        _stop(self.process)


def run_signer(root: Path, *args: str, size: int = 64 * 1024) -> Path:
    """Run the real signer (`fota-signer ARGS`) on a small release list under `root`; returns
    the release store. Keys live in root/keys, as keys/ does for the lab."""
    firmware = root / "firmware"
    firmware.mkdir(parents=True, exist_ok=True)
    (firmware / "releases.toml").write_text(LAB_RELEASES.format(size=size))
    env = {**os.environ, "FOTA_FIRMWARE_DIR": str(firmware), "FOTA_KEYS_DIR": str(root / "keys"),
           "FOTA_RELEASES_DIR": str(root / "releases"), "FOTA_KEY_ALGORITHM": "ed25519"}
    subprocess.run([sys.executable, "-m", "fotalab.signer.main", *args], env=env, check=True, capture_output=True)
    return root / "releases"


def build_releases(root: Path, *, size: int = 64 * 1024) -> Path:
    return run_signer(root, "build", size=size)


@dataclass
class Server:
    """The update server under gunicorn. With a `broker` it ingests device messages as the lab's
    server identity. `data_dir` holds its registry and generated API token (default: next to the
    log); `env` adds settings, e.g. FOTA_API_TOKEN or FOTA_SERVER_THREADS."""

    releases: Path
    log: Path
    port: int = field(default_factory=free_port)
    default_release: str = "2.0.0"
    process: subprocess.Popen | None = None
    workers: int = 2
    broker: Broker | None = None
    data_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    # its own persistent MQTT session: servers of other tests on the same broker do not share it
    mqtt_client_id: str = field(default_factory=lambda: f"fotalab-server-{os.urandom(4).hex()}")
    tls_files: TlsFiles | None = None      # HTTPS with these files, without a broker (benchmarks)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir or self.log.with_suffix(".data")

    @property
    def tls(self) -> TlsFiles | None:
        """With a TLS broker: HTTPS as the lab's update server (fota-server's certificate), MQTT over TLS."""
        if self.tls_files:
            return self.tls_files
        return self.broker.tls_files(SERVER) if self.broker and self.broker.tls else None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def client_tls(self, identity: str = "") -> dict:
        """requests' keywords to reach this server: the lab CA, and `identity`'s certificate if named."""
        if not self.tls:
            return {}
        return {"verify": str(self.tls.ca), "cert": self.broker.tls_files(identity).requests_cert if identity else None}

    def start(self) -> Server:
        env = {**os.environ, "FOTA_RELEASES_DIR": str(self.releases), "FOTA_SERVER_BIND": f"127.0.0.1:{self.port}",
               "FOTA_DEFAULT_RELEASE": self.default_release, "FOTA_SERVER_WORKERS": str(self.workers),
               "FOTA_DATA_DIR": str(self.data_dir), "FOTA_MQTT_CLIENT_ID": self.mqtt_client_id}
        if self.broker:
            env.update(FOTA_MQTT_HOST="127.0.0.1", FOTA_MQTT_PORT=str(self.broker.port), FOTA_MQTT_USERNAME=SERVER,
                       FOTA_MQTT_PASSWORD_FILE=str(self.broker.password_file(SERVER)))
        if self.tls_files:
            env.update(FOTA_TLS_CA=str(self.tls.ca), FOTA_TLS_CERT=str(self.tls.cert), FOTA_TLS_KEY=str(self.tls.key))
        elif self.tls:
            env.update(self.broker.ca.identity(SERVER).env(), FOTA_TLS_CRL=str(self.broker.ca.identity(SERVER).crl),
                       FOTA_MQTT_PORT=str(self.broker.tls_port))
        env.update(self.env)
        self.process = _start_http_service("fotalab.server.main", env, self.log, self.url, "update server",
                                           **self.client_tls())
        return self

    def ingester(self, *, not_pid: int = 0) -> int:
        """Wait until a worker (other than `not_pid`) ingests MQTT as the server; its pid."""
        def status() -> dict:
            answer = requests.get(f"{self.url}/readyz", timeout=2, **self.client_tls())
            return answer.json()["checks"].get("ingester") or {}
        wait_until(lambda: status().get("connected") and status()["pid"] != not_pid, 20,
                   "the server's MQTT ingester")
        return status()["pid"]

    def stop(self) -> None:
        _stop(self.process)


@dataclass
class FrontDoor:
    """`fota-frontdoor` (nginx) in front of a local server, as compose runs it: artifacts from
    the store, everything else proxied; its download log in `root`. With `ca`, HTTPS as the TLS
    lab's door: its own certificate (FRONTDOOR) and the CA's CRL, client certificates verified
    and passed on to the server with the secret it shares with it (`server_env`)."""

    root: Path
    server: Server
    port: int = field(default_factory=free_port)
    workers: int = 1
    ca: LabCA | None = None
    process: subprocess.Popen | None = None

    @staticmethod
    def server_env(ca: LabCA) -> dict[str, str]:
        """What the server behind a TLS door of `ca`'s lab runs with: the door's secret (in its
        identity's directory, as fota-provision puts it), its TLS identity (MQTT) and the CRL."""
        ca.ensure_identities([SERVER, FRONTDOOR])
        frontdoor_secret(ca.directory)
        server = ca.identity(SERVER)
        return {**server.env(), "FOTA_TLS_CRL": str(server.crl),
                "FOTA_FRONTDOOR_SECRET_FILE": str(server.directory / FRONTDOOR_SECRET)}

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://127.0.0.1:{self.port}"

    @property
    def download_log(self) -> Path:
        return self.root / "downloads.log"

    def client_tls(self, identity: str = "") -> dict:
        """requests' keywords to reach the door: the lab CA, and `identity`'s certificate if named."""
        if not self.ca:
            return {}
        found = self.ca.identity(identity)
        return {"verify": str(self.ca.ca_cert_path), "cert": (str(found.cert), str(found.key)) if identity else None}

    def environment(self) -> dict[str, str]:
        """What fota-frontdoor runs with (`fota-frontdoor health` too)."""
        env = {**os.environ, "FOTA_FRONTDOOR_LISTEN": f"127.0.0.1:{self.port}",
               "FOTA_FRONTDOOR_UPSTREAM": f"127.0.0.1:{self.server.port}",
               "FOTA_RELEASES_DIR": str(self.server.releases), "FOTA_DOWNLOAD_LOG": str(self.download_log),
               "FOTA_FRONTDOOR_RUN_DIR": str(self.root / "run"), "FOTA_FRONTDOOR_WORKERS": str(self.workers)}
        if self.ca:
            door = self.ca.identity(FRONTDOOR)
            frontdoor_secret(self.ca.directory)
            env.update(door.env(), FOTA_TLS_CRL=str(door.crl),
                       FOTA_FRONTDOOR_SECRET_FILE=str(door.directory / FRONTDOOR_SECRET))
        return env

    def start(self) -> FrontDoor:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.ca:
            self.ca.ensure_identities([FRONTDOOR])
        self.process = _start_http_service("fotalab.frontdoor.main", self.environment(), self.root / "frontdoor.log",
                                           self.url, "front door", **self.client_tls())
        return self

    def stop(self) -> None:
        _stop(self.process)


@dataclass
class FleetSim:
    """`fota-fleetsim` with `devices` virtual devices against a local broker and server."""

    root: Path
    releases: Path
    broker: Broker
    server: Server
    devices: int
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def status_file(self) -> Path:
        return self.root / "status.json"

    def start(self) -> FleetSim:
        self.root.mkdir(parents=True, exist_ok=True)
        self.broker.enroll_virtual(self.devices, self.root / "credentials")
        env = {**os.environ, "FOTA_SIM_DEVICES": str(self.devices), "FOTA_SIM_FLASH_DIR": str(self.root / "flash"),
               "FOTA_SIM_CREDENTIALS_DIR": str(self.root / "credentials"),
               "FOTA_SIM_STATUS_FILE": str(self.status_file),
               "FOTA_FACTORY_DIR": str(self.releases / "factory"), "FOTA_MQTT_HOST": "127.0.0.1",
               "FOTA_MQTT_PORT": str(self.broker.port), "FOTA_SERVER_URL": self.server.url,
               "FOTA_RESET_DELAY_S": "0.2", "FOTA_TRIAL_SOAK_S": "0", **self.env}
        with (self.root / "fleetsim.log").open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "fotalab.lab.fleetsim.main", "run"], env=env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def status(self) -> dict:
        try:
            return json.loads(self.status_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def stop(self) -> None:
        _stop(self.process)


@dataclass
class Device:
    """One simulated device: its flash directory and its supervisor process."""

    device_id: str
    flash_dir: Path
    releases: Path
    broker: Broker
    server: Server
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def environment(self) -> dict[str, str]:
        return {**os.environ, "FOTA_DEVICE_ID": self.device_id, "FOTA_FLASH_DIR": str(self.flash_dir),
                **({"FOTA_MQTT_PASSWORD_FILE": str(self.broker.password_file(self.device_id))}
                   if self.broker.plaintext else {}),
                "FOTA_FACTORY_DIR": str(self.releases / "factory"), "FOTA_MQTT_HOST": "127.0.0.1",
                "FOTA_MQTT_PORT": str(self.broker.port), "FOTA_SERVER_URL": self.server.url,
                "FOTA_RESET_DELAY_S": "0.2", "FOTA_TRIAL_SOAK_S": "0", "FOTA_WATCHDOG_S": "10",
                **(self.tls_env() if self.broker.tls else {}), **self.env}

    def tls_env(self) -> dict[str, str]:
        """Its own certificate (and no other), the broker's TLS port."""
        return {**self.broker.ca.identity(self.device_id).env(), "FOTA_MQTT_PORT": str(self.broker.tls_port)}

    @property
    def log(self) -> Path:
        """Everything the device's processes printed, across power cuts."""
        return self.flash_dir.parent / f"{self.device_id}.log"

    def start(self, **extra_env: str) -> Device:
        self.broker.enroll(self.device_id)
        log = self.log.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "fotalab.device.main", "run"],
                                        env={**self.environment(), **extra_env}, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    def power_cut(self) -> None:
        _stop(self.process)

    def inspect(self) -> dict:
        done = subprocess.run([sys.executable, "-m", "fotalab.device.main", "inspect"], env=self.environment(),
                              capture_output=True, check=True)
        return json.loads(done.stdout)
