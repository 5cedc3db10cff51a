"""An SWUpdate device end to end: Debian's real `swupdate` (suricatta, hawkBit DDI) against a
throw-away DDI stub serving the signer's .swu files, on the lab's supervisor-bootloader and
lazyfs flash. Proves: install into the inactive slot, reboot, post-reboot success reported; the
bad release crashes at boot, the bootloader falls back and SWUpdate reports the failure; power
cuts during download/install and during the first boot recover.

The device runs as a container would: in its own PID and mount namespaces (unshare), with a
private /tmp (SWUpdate's control socket is a fixed /tmp path) and /boot/grub linked to its flash;
SIGKILL of the namespace's first process takes every process and the FUSE mount with it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fotalab.formats.swu import EnvKey, UState, parse_grubenv
from fotalab.signer.build import build_releases
from fotalab.signer.releases import load_plan
from fotalab.signer.swu import ensure_swu_signer

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
RELEASES = """
[[hardware]]
id = "swupdate-arm64"
arch = "aarch64"
size = 131072
seed = 16
format = "swupdate"
""" + "".join(f'[[release]]\nhardware = "swupdate-arm64"\nversion = "{v}"\nsecurity_counter = {c}\n{extra}\n'
              for v, c, extra in (("1.0.0", 1, ""), ("2.0.0", 2, ""), ("2.1.0", 2, 'behaviour = "crash-at-boot"')))
ROOT_IN_NS = "/boot/work"


class Ddi:
    """The smallest hawkBit DDI SWUpdate 2022.12 talks to: one open action at a time."""

    def __init__(self, swu_dir: Path) -> None:
        self.swu_dir = swu_dir
        self.action: dict | None = None
        self.feedback: list[dict] = []
        self.sent = 0                        # bytes of .swu sent for the current action
        self.rate = 0                        # bytes per second; 0 = unpaced
        self.lock = threading.Lock()
        ddi = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def reply(self, body: bytes, kind: str = "application/json") -> None:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                base = f"http://127.0.0.1:{self.server.server_port}"
                parts = self.path.split("?")[0].strip("/").split("/")
                action = ddi.action
                if parts[-1].endswith(".swu"):
                    return ddi.send_swu(self, parts[-1])
                if "deploymentBase" in parts and action:
                    data = (ddi.swu_dir / action["file"]).read_bytes()
                    hashes = {h: hashlib.new(h, data).hexdigest() for h in ("sha1", "md5", "sha256")}
                    link = {"href": f"{base}/download/{action['file']}"}
                    return self.reply(json.dumps({"id": str(action["id"]), "deployment": {
                        "download": "forced", "update": "forced", "chunks": [{
                            "part": "os", "version": action["version"], "name": "firmware",
                            "artifacts": [{"filename": action["file"], "hashes": hashes, "size": len(data),
                                           "_links": {"download-http": link, "download": link}}]}]}}).encode())
                links = {"deploymentBase": {"href": f"{base}/{'/'.join(parts)}/deploymentBase/{action['id']}"}} \
                    if action else {}
                self.reply(json.dumps({"config": {"polling": {"sleep": "00:00:01"}}, "_links": links}).encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                status = body.get("status", {})
                entry = {"action": self.path.split("/")[-2], "execution": status.get("execution"),
                         "finished": status.get("result", {}).get("finished"), "details": status.get("details")}
                with ddi.lock:
                    ddi.feedback.append(entry)
                    if entry["execution"] == "closed" and ddi.action and entry["action"] == str(ddi.action["id"]):
                        ddi.action = None
                self.reply(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def send_swu(self, handler, name: str) -> None:
        data = (self.swu_dir / name).read_bytes()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        step = 4096
        for at in range(0, len(data), step):
            try:
                handler.wfile.write(data[at:at + step])
            except OSError:
                return
            self.sent += len(data[at:at + step])
            if self.rate:
                time.sleep(step / self.rate)

    def offer(self, action_id: int, version: str, file: str, rate: int = 0) -> None:
        with self.lock:
            self.action, self.sent, self.rate = {"id": action_id, "version": version, "file": file}, 0, rate

    def closed(self, action_id: int) -> dict | None:
        return next((f for f in self.feedback if f["action"] == str(action_id) and f["execution"] == "closed"), None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"


class Device:
    """fota-swdevice run in its own PID and mount namespaces: kill() is a power cut."""

    def __init__(self, work: Path, ddi: Ddi, store: Path) -> None:
        self.work, self.ddi, self.store = work, ddi, store
        self.log = work / "device.log"
        self.process: subprocess.Popen | None = None

    def start(self, **extra_env: str) -> None:
        env = {**extra_env, "PATH": os.environ["PATH"], "PYTHONPATH": str(REPO / "services"), "FOTA_DEVICE_ID": "sw-1",
               "FOTA_HARDWARE": "swupdate-arm64", "FOTA_FLASH_DIR": f"{ROOT_IN_NS}/flash",
               "FOTA_FLASH_BACKING": f"{ROOT_IN_NS}/backing", "FOTA_FACTORY_DIR": f"{ROOT_IN_NS}/store/factory",
               "FOTA_DDI_URL": self.ddi.url, "FOTA_DDI_POLL_S": "1", "FOTA_TRIAL_SOAK_S": "3",
               "FOTA_RESET_DELAY_S": "0.2", "FOTA_DDI_RETRY_WAIT_S": "1",
               # SWUpdate never fsyncs the GRUB environment it writes: the kernel's writeback (lazyfs
               # models it) is what lands it, here after 2 s instead of Linux's 30
               "FOTA_FLASH_EXPIRE_S": "2"}
        # The private /tmp must not hide the checkout or its .venv (a CI clone may live under /tmp):
        # both are bound aside first and back to the same path inside the new /tmp.
        prefix = Path(sys.prefix)
        script = (f"mount -t tmpfs none /boot && mkdir {ROOT_IN_NS} && mount --bind {self.work} {ROOT_IN_NS} "
                  f"&& mkdir /boot/repo /boot/prefix && mount --bind {REPO} /boot/repo "
                  f"&& mount --bind {prefix} /boot/prefix && mount -t tmpfs none /tmp "
                  f"&& mkdir -p {REPO} {prefix} && mount --bind /boot/repo {REPO} "
                  f"&& mount --bind /boot/prefix {prefix} "
                  f"&& cd / && exec {sys.executable} -m fotalab.device.swdevice run")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(["unshare", "--fork", "--pid", "--mount", "--propagation", "private",
                                             "--kill-child", "sh", "-c", script], env=env, stdout=log,
                                            stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.process.kill()                       # unshare dies; --kill-child takes its namespace along
        self.process.wait()
        time.sleep(0.3)

    def env(self) -> dict[str, str]:
        """The GRUB environment as it is on the volume (what survives a power cut)."""
        try:
            return parse_grubenv((self.work / "backing" / "grub" / "grubenv").read_bytes())
        except (OSError, ValueError):
            return {}

    def boot_env(self) -> dict[str, str]:
        """What the bootloader would boot from after a cut: grubenv, else its own copy."""
        try:
            return parse_grubenv((self.work / "backing" / "grub" / "grubenv.bootloader").read_bytes()) \
                if not self.env() else self.env()
        except (OSError, ValueError):
            return {}

    def slot_version(self, slot: str) -> bytes:
        return (self.work / "backing" / f"slot-{slot}.img").read_bytes()[:64]


def wait(what, timeout: float, device: Device):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := what():
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s; device log:\n{device.log.read_text()[-6000:]}")


def skip_unless_a_device_can_run() -> None:
    if shutil.which("swupdate") is None:
        pytest.skip("Debian's swupdate is not installed (scripts/test installs it with apt as root)")
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse") or shutil.which("unshare") is None:
        pytest.skip("needs root, unshare and /dev/fuse (the device runs in its own namespaces with a FUSE flash)")


@pytest.fixture
def lab(tmp_path, release_key):
    skip_unless_a_device_can_run()
    work = tmp_path / "w"
    (work / "store").mkdir(parents=True)
    (work / "firmware").mkdir()
    (work / "firmware" / "releases.toml").write_text(RELEASES)
    signer, _ = ensure_swu_signer(work / "keys")
    store = work / "store"
    build_releases(load_plan(work / "firmware" / "releases.toml"), release_key, work / "firmware", store,
                   swu_signer=signer)
    # the slots' paths inside the .swu are the device's flash as it sees it: rebuild for ROOT_IN_NS
    from fotalab.signer import swu as swu_module
    index = json.loads((store / "index.json").read_text())
    images = {r["version"]: (store / "artifacts" / r["image"]).read_bytes() for r in index["releases"]}
    swus = work / "swu"
    swus.mkdir()
    for version, image in images.items():
        (swus / f"{version}.swu").write_bytes(swu_module.build_swu(
            version=version, hardware="swupdate-arm64", member="firmware.img", data=image, signer=signer,
            flash_dir=f"{ROOT_IN_NS}/flash"))
    (swus / "1.0.0_to_2.0.0.swu").write_bytes(swu_module.build_swu(
        version="2.0.0", hardware="swupdate-arm64", member="firmware.rdiff", delta=True, signer=signer,
        data=swu_module.rdiff_delta(images["1.0.0"], images["2.0.0"]), flash_dir=f"{ROOT_IN_NS}/flash"))
    ddi = Ddi(swus)
    device = Device(work, ddi, store)
    yield device, ddi, images
    if device.process and device.process.poll() is None:
        device.kill()
    ddi.server.shutdown()


def test_swupdate_device_installs_reboots_reports_and_falls_back_through_power_cuts(lab):
    device, ddi, images = lab
    device.start()
    wait(lambda: device.env().get(EnvKey.SLOT) == "a", 30, device)
    assert device.slot_version("a") == images["1.0.0"][:64]

    # 1. the delta from 1.0.0, slowly; the power is cut mid-download (SWUpdate streams it into slot b)
    size = (ddi.swu_dir / "1.0.0_to_2.0.0.swu").stat().st_size
    ddi.offer(1, "2.0.0", "1.0.0_to_2.0.0.swu", rate=max(4096, size // 4))
    wait(lambda: ddi.sent > size // 2, 60, device)
    device.kill()
    assert device.boot_env().get(EnvKey.SLOT) == "a"         # nothing switched
    ddi.rate = 0
    device.start()                                            # power back: downloads again, installs, reboots

    # 2. the first boot of 2.0.0 is on trial: cut it too
    wait(lambda: device.env().get(EnvKey.UPGRADE_AVAILABLE) == "1" and device.env().get(EnvKey.BOOTCOUNT) == "1"
         and device.env().get(EnvKey.SLOT) == "b", 60, device)
    device.kill()
    device.start()
    closed = wait(lambda: ddi.closed(1), 60, device)
    assert closed["finished"] == "success", ddi.feedback
    assert any(f["execution"] == "proceeding" for f in ddi.feedback if f["action"] == "1")
    wait(lambda: device.env().get(EnvKey.USTATE) == UState.OK, 20, device)
    env = device.env()
    assert env[EnvKey.SLOT] == "b" and env[EnvKey.UPGRADE_AVAILABLE] == "0", env
    assert device.slot_version("b") == images["2.0.0"][:64]

    # 3. the bad release: installed into slot a, crashes at every boot, the bootloader falls back
    ddi.offer(2, "2.1.0", "2.1.0.swu")
    closed = wait(lambda: ddi.closed(2), 90, device)
    assert closed["finished"] == "failure", ddi.feedback
    env = wait(lambda: device.env() if device.env().get(EnvKey.USTATE) == UState.OK else None, 20, device)
    assert env[EnvKey.SLOT] == "b" and env[EnvKey.UPGRADE_AVAILABLE] == "0", env
    log = device.log.read_text()
    assert "crashing at boot" in log and "failed 3 trial boots" in log
