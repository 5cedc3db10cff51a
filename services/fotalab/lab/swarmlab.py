"""Drive the lab deployed as a Docker Swarm stack (deploy/swarm/stack.yaml), with the same
surface as ComposeLab: list the devices, power one off and on, read its flash, read a file.

A device is a task in a slot of a device service: slot s of a service whose FOTA_SLOT_OFFSET is
o is device-(o+s). Containers are found by Swarm's labels (`com.docker.swarm.service.name`,
`com.docker.swarm.task.name`), never by compose's: the lab's image carries compose labels from
its build, and every stack container inherits them. `docker kill` of a task's container is a
power cut; Swarm notices the failed task and starts a new container on the same slot, which
mounts the same flash volume, so `start` only waits for that to happen.

On several nodes each node's engine is reached with its own docker CLI arguments
(`engines`: node hostname -> e.g. ["docker", "-H", "tcp://172.30.213.11:2375"]); the managers
answer for the services and the tasks, and the first manager that answers is used.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

SERVICE_LABEL = "com.docker.swarm.service.name"
TASK_LABEL = "com.docker.swarm.task.name"
STACK_LABEL = "com.docker.stack.namespace"
LOCAL = ("docker",)
DEVICE_ID = "FOTA_DEVICE_ID=device-$((FOTA_SLOT_OFFSET + FOTA_TASK_SLOT))"   # as the stack's device command


class EngineDown(RuntimeError):
    """The node's engine does not answer (the node is off)."""


def swarm_state(docker: tuple[str, ...] = LOCAL) -> str:
    """'active', 'inactive', 'pending', ... as `docker info` reports this engine's swarm membership."""
    done = subprocess.run([*docker, "info", "--format", "{{.Swarm.LocalNodeState}}"],
                          capture_output=True, text=True, timeout=30)
    return done.stdout.strip() if done.returncode == 0 else "unreachable"


def stacks(docker: tuple[str, ...] = LOCAL) -> list[str]:
    """Stacks on this engine that run a device service (containers found by Swarm's labels)."""
    done = subprocess.run([*docker, "ps", "--filter", f"label={STACK_LABEL}", "--format",
                           f'{{{{.Label "{STACK_LABEL}"}}}} {{{{.Label "{SERVICE_LABEL}"}}}}'],
                          capture_output=True, text=True, timeout=30)
    found = set()
    for line in done.stdout.splitlines():
        stack, _, service = line.partition(" ")
        if service.startswith(f"{stack}_device"):
            found.add(stack)
    return sorted(found)


def started_epoch(text: str) -> float | None:
    """Docker's StartedAt (RFC 3339 with nanoseconds, UTC) as a Unix time."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", text)
    if not match:
        return None
    whole = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return whole + float(f"0.{match[2] or 0}")


@dataclass
class Slot:
    service: str      # full service name, e.g. fotalab-stack_device
    slot: int


@dataclass
class SwarmLab:
    stack: str
    engines: dict[str, tuple[str, ...]] = field(default_factory=dict)   # node hostname -> docker CLI
    managers: list[str] = field(default_factory=list)                  # hostnames of manager nodes
    down: set[str] = field(default_factory=set)                        # nodes known to be off
    restart_timeout_s: float = 120.0
    _slots: dict[str, Slot] = field(default_factory=dict, repr=False)

    # -- the CLI, per node
    def docker(self, node: str | None, *args: str, timeout: float = 120, check: bool = True,
               input: str | None = None) -> subprocess.CompletedProcess:
        argv = [*self.engines.get(node, LOCAL), *args] if node else [*LOCAL, *args]
        try:
            return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout, input=input)
        except subprocess.CalledProcessError as exc:
            if "Cannot connect" in (exc.stderr or "") or "connection refused" in (exc.stderr or "").lower():
                raise EngineDown(f"engine of node {node} does not answer") from exc
            raise

    def manager(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a swarm-wide command on the first manager that answers."""
        last: Exception | None = None
        for node in [m for m in self.managers if m not in self.down] or [None]:
            try:
                return self.docker(node, *args, timeout=timeout)
            except (EngineDown, subprocess.TimeoutExpired) as exc:
                last = exc
            except subprocess.CalledProcessError as exc:
                if "not a swarm manager" not in exc.stderr and "quorum" not in exc.stderr \
                        and "deadline exceeded" not in exc.stderr:
                    raise
                last = exc
        raise EngineDown(f"no manager answers: {last}")

    def nodes(self) -> list[str | None]:
        return [n for n in self.engines if n not in self.down] or [None]

    # -- the stack's services and the devices' slots
    def device_services(self) -> dict[str, tuple[int, int]]:
        """Device service -> (slot offset, replicas), from the services' specs."""
        names = self.manager("service", "ls", "--filter", f"label={STACK_LABEL}={self.stack}",
                             "--format", "{{.Name}}").stdout.split()
        names = [n for n in names if n.startswith(f"{self.stack}_device")]
        if not names:
            return {}
        specs = json.loads(self.manager("service", "inspect", *names).stdout)
        found = {}
        for spec in specs:
            env = dict(e.split("=", 1) for e in spec["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env", []))
            replicas = spec["Spec"]["Mode"].get("Replicated", {}).get("Replicas", 0)
            found[spec["Spec"]["Name"]] = (int(env.get("FOTA_SLOT_OFFSET", "0")), replicas)
        return found

    def device_containers(self) -> list[str]:
        """The fleet's device ids, device-1..device-N, as the device services define them."""
        self._slots = {}
        for service, (offset, replicas) in self.device_services().items():
            for slot in range(1, replicas + 1):
                self._slots[f"device-{offset + slot}"] = Slot(service, slot)
        return sorted(self._slots, key=lambda d: int(d.rsplit("-", 1)[1]))

    def services(self, prefix: str = "device-") -> list[str]:
        return [d for d in self.device_containers() if d.startswith(prefix)]

    def slot(self, name: str) -> Slot:
        if name.startswith("device-"):
            if name not in self._slots:
                self.device_containers()
            return self._slots[name]
        return Slot(f"{self.stack}_{name}", 1)

    def _tasks_on(self, node: str | None, slot: Slot) -> list[tuple[str, str, str]]:
        """(container id, state, created) of the slot's containers on one node, newest first."""
        done = self.docker(node, "ps", "-a", "--no-trunc", "--filter", f"label={SERVICE_LABEL}={slot.service}",
                           "--format", f'{{{{.ID}}}}|{{{{.Label "{TASK_LABEL}"}}}}|{{{{.State}}}}|{{{{.CreatedAt}}}}',
                           timeout=30)
        rows = []
        for line in done.stdout.splitlines():
            cid, task, state, created = line.split("|", 3)
            # task names: <service>.<slot>.<task id> (replicated) or <service>.<node id>.<task id> (jobs)
            parts = task[len(slot.service) + 1:].split(".")
            if parts and (parts[0] == str(slot.slot) or not parts[0].isdigit()):
                rows.append((cid, state, created))
        return sorted(rows, key=lambda r: r[2], reverse=True)

    def locate(self, name: str, running_only: bool = True) -> tuple[str | None, str]:
        """(node, container id) of the slot's running container (else its newest one)."""
        slot = self.slot(name)
        newest: tuple[str, str | None, str] | None = None
        for node in self.nodes():
            try:
                rows = self._tasks_on(node, slot)
            except (EngineDown, subprocess.TimeoutExpired, subprocess.CalledProcessError):
                continue
            for cid, state, created in rows:
                if state == "running":
                    return node, cid
                if newest is None or created > newest[0]:
                    newest = (created, node, cid)
        if newest and not running_only:
            return newest[1], newest[2]
        raise LookupError(f"no running container for {name} ({slot.service} slot {slot.slot}) in stack {self.stack}")

    def container(self, name: str) -> str:
        return self.locate(name)[1]

    def node_of(self, name: str) -> str | None:
        return self.locate(name, running_only=False)[0]

    # -- acting
    def running(self, name: str) -> bool:
        try:
            self.locate(name)
            return True
        except LookupError:
            return False

    def kill(self, name: str) -> None:
        """Power cut: SIGKILL to every process of the task's container at once. Swarm sees the
        task fail (exit 137) and starts a new one on the same slot, with the same flash."""
        node, cid = self.locate(name)
        self.docker(node, "kill", cid)

    def start(self, name: str) -> float | None:
        """Power back on: Swarm does it by itself (after its restart delay), perhaps before anyone
        asks. Waits (bounded) until the slot runs again; returns when its container started."""
        deadline = time.monotonic() + self.restart_timeout_s
        while time.monotonic() < deadline:
            try:
                node, cid = self.locate(name)
            except LookupError:
                time.sleep(0.5)
                continue
            started = self.docker(node, "inspect", "-f", "{{.State.StartedAt}}", cid, check=False).stdout.strip()
            return started_epoch(started)
        return None

    def exec(self, name: str, *command: str, timeout: float = 60) -> str:
        node, cid = self.locate(name)
        return self.docker(node, "exec", cid, *command, timeout=timeout).stdout

    def read_file(self, name: str, path: str) -> str:
        return self.exec(name, "cat", path).strip()

    def inspect_device(self, name: str) -> dict:
        """The device's flash as its own bootloader reads it (works while it runs). A slot between
        two containers (Swarm replacing a task) is waited for, and asked again once."""
        for attempt in range(2):
            self.start(name)
            try:
                return json.loads(self.exec(name, "sh", "-c", f"{DEVICE_ID} exec fota-device inspect"))
            except (LookupError, subprocess.CalledProcessError):
                if attempt:
                    raise
                time.sleep(3)
        raise AssertionError("unreachable")

    def reset_flash(self, name: str) -> None:
        """Factory flash: freeze the device (no write can land after the erase), erase its
        flash volume from a helper container on the same node, then cut its power."""
        node, cid = self.locate(name)
        info = json.loads(self.docker(node, "inspect", cid).stdout)[0]
        volume = next(m["Name"] for m in info["Mounts"] if m["Destination"] == "/data")
        self.docker(node, "pause", cid, check=False)
        try:
            self.docker(node, "run", "--rm", "-v", f"{volume}:/data", info["Config"]["Image"],
                        "find", "/data", "-mindepth", "1", "-delete")
        finally:
            self.docker(node, "kill", cid, check=False)
            self.docker(node, "unpause", cid, check=False)
        self.start(name)

    def logs(self, tail: int = 200) -> str:
        names = self.manager("service", "ls", "--filter", f"label={STACK_LABEL}={self.stack}",
                             "--format", "{{.Name}}").stdout.split()
        out = []
        for service in names:
            try:
                done = self.manager("service", "logs", "--no-task-ids", "--tail", str(tail), service, timeout=180)
                out.append(f"== {service}\n{done.stdout}{done.stderr}")
            except (EngineDown, subprocess.SubprocessError) as exc:     # the others' logs still count
                out.append(f"== {service}\n(no logs: {exc})")
        return "\n".join(out)

    def endpoint(self, service: str, port: int) -> str:
        """host:port where the service's published port answers (host-mode publishing: on its node)."""
        node = self.node_of(service)
        argv = self.engines.get(node, LOCAL) if node else LOCAL
        host = "127.0.0.1"
        for i, arg in enumerate(argv):
            if arg == "-H" and i + 1 < len(argv):
                host = re.sub(r"^\w+://", "", argv[i + 1]).rsplit(":", 1)[0]
        return f"{host}:{port}"
