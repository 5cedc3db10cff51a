"""Drive a running compose lab from the host: find containers by compose labels (never by
name: compose v1 and v2 spell names differently), power devices off and on, read their flash."""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .swfleet import is_swdevice

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


def docker_problem() -> str | None:
    """None if a Docker engine and compose v2 answer, else what is missing."""
    try:
        subprocess.run(["docker", "info"], check=True, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return "no Docker engine answers (`docker info` failed)"
    try:
        subprocess.run(["docker", "compose", "version"], check=True, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return "docker compose v2 is missing: run scripts/install-compose"
    return None


@dataclass
class ComposeLab:
    project: str
    directory: Path
    env: dict[str, str] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", "compose", "-p", self.project, *args], cwd=self.directory,
                              env={**os.environ, **self.env}, check=True, capture_output=True, text=True,
                              timeout=timeout)

    def container(self, service: str) -> str:
        found = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={PROJECT_LABEL}={self.project}",
                                "--filter", f"label={SERVICE_LABEL}={service}"],
                               check=True, capture_output=True, text=True).stdout.split()
        if len(found) != 1:
            raise LookupError(f"expected one container for service {service!r} of project {self.project!r}, "
                              f"found {len(found)}")
        return found[0]

    def services(self, prefix: str = "device-") -> list[str]:
        """The device services as the compose files define them."""
        listed = self.compose("config", "--services").stdout.split()
        return sorted((s for s in listed if s.startswith(prefix)), key=lambda s: int(s.rsplit("-", 1)[1]))

    def device_containers(self) -> list[str]:
        """The device services that have a container, found by compose labels alone (works for a
        lab started by anyone, from any directory): device-N, then the SWUpdate devices swupdate-N."""
        listed = subprocess.run(["docker", "ps", "-a", "--filter", f"label={PROJECT_LABEL}={self.project}",
                                 "--format", f'{{{{.Label "{SERVICE_LABEL}"}}}}'],
                                check=True, capture_output=True, text=True).stdout.split()
        found = {s for s in listed if (s.startswith("device-") and s[len("device-"):].isdigit()) or is_swdevice(s)}
        return sorted(found, key=lambda s: (is_swdevice(s), int(s.rsplit("-", 1)[1])))

    def running(self, service: str) -> bool:
        done = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", self.container(service)],
                              check=True, capture_output=True, text=True)
        return done.stdout.strip() == "true"

    def reset_flash(self, service: str) -> None:
        """Power off, erase the device's flash volume (factory state), power on again."""
        container = self.container(service)
        info = json.loads(subprocess.run(["docker", "inspect", container], check=True, capture_output=True,
                                         text=True).stdout)[0]
        flash = "/flash" if is_swdevice(service) else "/data"      # an SWUpdate device's volume is under lazyfs
        volume = next(m["Name"] for m in info["Mounts"] if m["Destination"] == flash)
        subprocess.run(["docker", "kill", container], capture_output=True)
        subprocess.run(["docker", "run", "--rm", "-v", f"{volume}:/data", info["Config"]["Image"],
                        "find", "/data", "-mindepth", "1", "-delete"], check=True, capture_output=True)
        self.start(service)

    def read_file(self, service: str, path: str) -> str:
        done = subprocess.run(["docker", "exec", self.container(service), "cat", path],
                              check=True, capture_output=True, text=True)
        return done.stdout.strip()

    def kill(self, service: str) -> None:
        """Power cut: SIGKILL to every process of the container at once."""
        subprocess.run(["docker", "kill", self.container(service)], check=True, capture_output=True)

    def start(self, service: str) -> None:
        subprocess.run(["docker", "start", self.container(service)], check=True, capture_output=True)

    def inspect_device(self, service: str) -> dict:
        """The device's flash as its own bootloader reads it (works while it runs): `fota-device
        inspect`, or for an SWUpdate device `fota-swdevice inspect` (GRUB environment and slots)."""
        command = "fota-swdevice" if is_swdevice(service) else "fota-device"
        done = subprocess.run(["docker", "exec", self.container(service), command, "inspect"],
                              check=True, capture_output=True, text=True, timeout=60)
        return json.loads(done.stdout)

    def exec_text(self, service: str, *command: str, timeout: float = 10) -> str | None:
        """What a command run in the device's container prints (None: it failed, or the device is off)."""
        try:
            done = subprocess.run(["docker", "exec", self.container(service), *command], capture_output=True,
                                  text=True, timeout=timeout)
        except (subprocess.SubprocessError, LookupError):
            return None
        return done.stdout if done.returncode == 0 else None

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "200").stdout
