"""`scripts/stack`: the lab as a Docker Swarm stack in one step (deploy/swarm/stack.yaml, docs/swarm.md).

    scripts/stack up [--devices N]   swarm init if this engine is in no swarm, the images, deploy,
                                     wait until every job completed and every service is healthy
    scripts/stack scale N            N devices (new credentials, the broker re-reads them)
    scripts/stack status             the services, one line: healthy or not (exit 0 or 1)
    scripts/stack fota ARGS...       the operator's `fota` command against the stack's server
    scripts/stack down [-v]          remove the stack (-v: its volumes, every flash too), and leave
                                     the swarm if `up` initialized it

The stack is named fotalab-stack ($FOTA_STACK); the server and its dashboard are published on
port 18800 ($STACK_SERVER_PORT), the broker on 11883 ($STACK_MQTT_PORT), so it runs beside a
compose lab on 8000/1883. Every FOTA_* knob of stack.yaml is read from the shell.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .swarmlab import LOCAL, STACK_LABEL, SwarmLab, swarm_state

ROOT = Path(__file__).resolve().parents[3]
STACK_FILE = ROOT / "deploy" / "swarm" / "stack.yaml"
STATE_DIR = ROOT / ".cache" / "stack"          # git-ignored: what this tool must undo
DEVICE_BLOCK = "  device:\n    <<: *device\n"   # the stack file's single device service


def log(message: str) -> None:
    print(f"[stack] {message}", flush=True)


def dotenv(root: Path = ROOT) -> dict[str, str]:
    """The .env values compose would read (scripts/offline-images writes the image names there)."""
    values: dict[str, str] = {}
    path = root / ".env"
    if path.exists():
        for line in path.read_text().splitlines():
            key, sep, value = line.strip().removeprefix("export ").partition("=")
            if sep and key and not key.startswith("#"):
                values[key.strip()] = value.strip().strip("'\"")
    return values


@dataclass
class Group:
    """Devices pinned to one node: a device service of its own, device-(offset+1)..device-(offset+count)."""
    node: str
    count: int
    offset: int


def grouped_stack(text: str, groups: list[Group], shared_dir: str | None) -> str:
    """The stack file with one device service per node (placement: node.hostname), and the
    release store and credentials bound to a directory every node shares."""
    if DEVICE_BLOCK not in text:
        raise ValueError("stack file has no `device: <<: *device` block to replace")
    services = "".join(
        f"  device-{g.node}:\n    <<: *device\n"
        f"    environment: {{<<: *device-environment, FOTA_SLOT_OFFSET: \"{g.offset}\"}}\n"
        f"    deploy: {{<<: *device-deploy, replicas: {g.count}, "
        f"placement: {{constraints: [\"node.hostname == {g.node}\"]}}}}\n" for g in groups)
    text = text.replace(DEVICE_BLOCK, services)
    if shared_dir:
        for volume in ("credentials", "releases"):
            text = text.replace(f"\n  {volume}:\n", f"\n  {volume}:\n    driver_opts: "
                                f"{{type: none, o: bind, device: \"{shared_dir}/{volume}\"}}\n", 1)
    return text


@dataclass
class Stack:
    name: str = "fotalab-stack"
    engines: dict[str, tuple[str, ...]] = field(default_factory=dict)
    managers: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def lab(self) -> SwarmLab:
        return SwarmLab(self.name, self.engines, self.managers)

    def docker_env(self) -> dict[str, str]:
        base = {k: v for k, v in dotenv().items() if k in ("MOSQUITTO_IMAGE", "FOTALAB_TAG")}
        return {**base, **os.environ, **self.env}

    def deploy(self, groups: list[Group] | None = None, shared_dir: str | None = None) -> None:
        text = STACK_FILE.read_text()
        stack_file = STACK_FILE
        if groups or shared_dir:
            # written beside stack.yaml so its relative paths still resolve, removed after the deploy
            stack_file = STACK_FILE.with_name(f".{self.name}.generated.yaml")
            stack_file.write_text(grouped_stack(text, groups or [], shared_dir))
        try:
            self.stack_deploy(stack_file)
        finally:
            if stack_file != STACK_FILE:
                stack_file.unlink(missing_ok=True)

    def stack_deploy(self, stack_file: Path) -> None:
        """docker stack deploy on the first manager that takes it, with the knobs in its environment."""
        last = ""
        for node in self.managers or [None]:
            argv = [*self.engines.get(node, LOCAL), "stack", "deploy", "--resolve-image", "never", "--prune",
                    "-c", str(stack_file), self.name]
            done = subprocess.run(argv, capture_output=True, text=True, env=self.docker_env(), timeout=300)
            if done.returncode == 0:
                return
            last = done.stderr.strip()
        raise RuntimeError(f"docker stack deploy failed: {last}")

    def services(self) -> list[tuple[str, str, str]]:
        """(name, mode, replicas) of the stack's services, e.g. ('x_device', 'replicated', '3/3')."""
        out = self.lab.manager("service", "ls", "--filter", f"label={STACK_LABEL}={self.name}",
                               "--format", "{{.Name}}|{{.Mode}}|{{.Replicas}}").stdout
        return [tuple(line.split("|", 2)) for line in out.splitlines() if line]

    def problems(self) -> list[str]:
        """What is not yet ready: a service Swarm is still updating (a redeploy: its old tasks may
        still look ready), a job not completed, a service short of healthy replicas."""
        found = []
        services = self.services()
        if services:
            states = self.lab.manager("service", "inspect", "--format",
                                      "{{.Spec.Name}} {{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
                                      *[name for name, _, _ in services]).stdout
            found += [f"{line.split()[0].removeprefix(self.name + '_')} (updating)"
                      for line in states.splitlines() if line.endswith(" updating")]
        for name, mode, replicas in services:
            short = name.removeprefix(f"{self.name}_")
            if "job" in mode:
                done, _, total = replicas.partition("(")[2].partition(" ")[0].partition("/")
                if not done or done != total:
                    found.append(f"{short} (job: {replicas})")
            else:
                running, _, wanted = replicas.split(" ")[0].partition("/")
                if running != wanted:
                    found.append(f"{short} ({running}/{wanted} running and healthy)")
        return found

    def wait_ready(self, timeout: float = 600) -> None:
        """Until everything is ready twice in a row, a few seconds apart (after a redeploy Swarm
        starts updating a service a moment after `docker stack deploy` returns)."""
        deadline, shown, ready_once = time.monotonic() + timeout, "", False
        time.sleep(3)
        while True:
            problems = self.problems()
            if not problems and self.services():
                if ready_once:
                    return
                ready_once = True
                time.sleep(3)
                continue
            ready_once = False
            line = ", ".join(problems)
            if line != shown:
                log(f"waiting: {line}")
                shown = line
            if time.monotonic() > deadline:
                raise TimeoutError(f"stack {self.name} not ready after {timeout:.0f} s: {line}")
            time.sleep(2)

    def remove(self, volumes: bool) -> None:
        self.lab.manager("stack", "rm", self.name, timeout=120)
        nodes = list(self.engines) or [None]
        deadline = time.monotonic() + 60
        while True:     # containers and the network go asynchronously
            left = {n: self.lab.docker(n, "ps", "-aq", "--filter", f"label={STACK_LABEL}={self.name}",
                                       check=False).stdout.split() for n in nodes}
            if not any(left.values()):
                break
            if time.monotonic() > deadline:
                # a completed job's container outlives `docker stack rm` (Engine 20.10): remove it
                for node, containers in left.items():
                    self.lab.docker(node, "rm", "-f", *containers, check=False)
                break
            time.sleep(1)
        if volumes:
            for node in nodes:
                names = self.lab.docker(node, "volume", "ls", "-q", "--filter", f"label={STACK_LABEL}={self.name}",
                                        check=False).stdout.split()
                names += [v for v in self.lab.docker(node, "volume", "ls", "-q", check=False).stdout.split()
                          if v.startswith(f"{self.name}_")]
                if names:
                    self.lab.docker(node, "volume", "rm", "-f", *sorted(set(names)), check=False)


def ensure_swarm() -> None:
    """A single-node swarm on this engine, remembered so `down` leaves only the swarm it made."""
    state = swarm_state()
    if state == "active":
        return
    if state not in ("inactive", ""):
        raise RuntimeError(f"this engine's swarm state is {state!r}: fix it first (docker swarm leave --force?)")
    log("this engine is in no swarm: docker swarm init (single node)")
    subprocess.run([*LOCAL, "swarm", "init", "--advertise-addr", "127.0.0.1"], check=True, capture_output=True)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    (STATE_DIR / "swarm-initialized").write_text("scripts/stack up ran docker swarm init\n")


def leave_swarm_if_ours() -> None:
    marker = STATE_DIR / "swarm-initialized"
    if not marker.exists():
        return
    left = subprocess.run([*LOCAL, "service", "ls", "-q"], capture_output=True, text=True).stdout.split()
    if left:
        log(f"not leaving the swarm: {len(left)} services of others still run in it")
        return
    subprocess.run([*LOCAL, "swarm", "leave", "--force"], capture_output=True)
    marker.unlink()
    log("left the swarm `up` had initialized")


def prepare_images() -> None:
    """The images, as scripts/lab up makes them: base images (offline if need be), then the lab's."""
    subprocess.run([str(ROOT / "scripts" / "images")], check=True)
    log("docker compose build signer (the lab's image)")
    subprocess.run(["docker", "compose", "build", "signer"], cwd=ROOT, check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "down", "scale", "status", "fota"))
    parser.add_argument("args", nargs=argparse.REMAINDER)
    parser.add_argument("--name", default=os.environ.get("FOTA_STACK") or "fotalab-stack")
    parser.add_argument("--timeout", type=float, default=600, help="seconds `up` and `scale` wait for health")
    args = parser.parse_args(argv)
    stack = Stack(args.name)
    if args.command == "up":
        devices = args.args[args.args.index("--devices") + 1] if "--devices" in args.args else None
        prepare_images()
        ensure_swarm()
        if devices:
            stack.env["FOTA_FLEET_SIZE"] = devices
        return up(stack, args.timeout)
    if swarm_state() != "active":
        print("stack: this engine is in no swarm: scripts/stack up first", file=sys.stderr)
        return 2
    if args.command == "scale":
        if not args.args or not args.args[0].isdigit():
            parser.error("scale N: the number of devices")
        stack.env["FOTA_FLEET_SIZE"] = args.args[0]
        return up(stack, args.timeout)
    if args.command == "status":
        for name, mode, replicas in stack.services():
            print(f"{name:<36}{mode:<18}{replicas}")
        problems = stack.problems()
        log(f"stack {stack.name}: " + (f"NOT ready: {', '.join(problems)}" if problems else "healthy"))
        return 1 if problems or not stack.services() else 0
    if args.command == "fota":
        lab = stack.lab
        node, cid = lab.locate("server")
        done = subprocess.run([*lab.engines.get(node, LOCAL), "exec", "-e", "FOTA_SERVER_URL=http://127.0.0.1:8000",
                               "-e", "FOTA_API_TOKEN_FILE=/var/lib/fotalab/api-token", cid, "fota", *args.args])
        return done.returncode
    stack.remove(volumes="-v" in args.args or "--volumes" in args.args)
    log(f"stack {stack.name} removed")
    leave_swarm_if_ours()
    return 0


def up(stack: Stack, timeout: float) -> int:
    if "FOTA_FLEET_SIZE" not in stack.env and "FOTA_FLEET_SIZE" not in os.environ:
        current = stack.lab.device_services() if stack.services() else {}
        if current:     # keep the size `scale` chose
            stack.env["FOTA_FLEET_SIZE"] = str(sum(r for _, r in current.values()))
    log(f"docker stack deploy {stack.name} ({stack.env.get('FOTA_FLEET_SIZE', os.environ.get('FOTA_FLEET_SIZE', '3'))}"
        " devices)")
    stack.deploy()
    try:
        stack.wait_ready(timeout)
    except TimeoutError as exc:
        log(f"ERROR: {exc}")
        return 1
    port = stack.docker_env().get("STACK_SERVER_PORT", "18800")
    mqtt = stack.docker_env().get("STACK_MQTT_PORT", "11883")
    log(f"stack {stack.name}: healthy")
    log(f"dashboard  http://localhost:{port}/")
    log(f"broker     mqtt://localhost:{mqtt}  (credentials in the stack's credentials volume)")
    log(f"operator   scripts/stack fota devices;  chaos: scripts/chaos --stack {stack.name}")
    log("stop it:   scripts/stack down  (-v: its volumes too, every flash back to factory)")
    return 0
