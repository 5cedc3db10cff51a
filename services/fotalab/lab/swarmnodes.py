"""A multi-node Docker Swarm on one machine, for tests: every node is a real Docker Engine
(Debian's docker.io) in its own container (deploy/swarm/node), on a bridge network this module
creates, with a fixed address so a node that loses power comes back as itself.

- Each node's engine state (images, containers, volumes: the devices' flash) is a volume of its
  own, so it survives `docker kill` of the node container (a rack losing power) and `docker start`.
- The nodes run with every capability except CAP_SYS_RESOURCE (this machine's engine lacks it, so
  --privileged fails) and make /sys and the cgroups writable themselves (entrypoint.sh).
- Every node is a manager (3 managers: the swarm keeps its quorum while any one node is off).
- The lab's images go into every node with `docker save | docker load` (there is no registry).
- A directory on this machine is mounted at the same path in every node: the stack binds the
  release store and the credentials to it, as real hosts would mount an NFS export.
- The host's docker CLI reaches each engine at tcp://<node address>:2375 on that private network.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

NODE_IMAGE = "fotalab/swarm-node:bookworm"
NODE_RECIPE = Path(__file__).resolve().parents[3] / "deploy" / "swarm" / "node"
SHARED_IN_NODE = "/srv/fotalab-shared"
# docker run options that give the node what --privileged would, minus CAP_SYS_RESOURCE
NODE_RIGHTS = ["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE", "--security-opt", "seccomp=unconfined",
               "--security-opt", "apparmor=unconfined", "--security-opt", "systempaths=unconfined",
               "--device-cgroup-rule", "a *:* rwm"]


def run(*argv: str, timeout: float = 300, check: bool = True, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])}... exited {done.returncode}: {done.stderr.strip()[-800:]}")
    return done


def log(message: str) -> None:
    print(f"[swarm] {message}", flush=True)


def build_node_image(base_image: str) -> None:
    """The node image from the lab's offline base image and Debian packages (no registry);
    rebuilt when its recipe (deploy/swarm/node) changes."""
    recipe = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(NODE_RECIPE.iterdir()))).hexdigest()[:16]
    have = run("docker", "image", "inspect", "-f", '{{index .Config.Labels "fotalab.recipe"}}', NODE_IMAGE,
               check=False).stdout.strip()
    if have == recipe:
        return
    log(f"building {NODE_IMAGE} from {base_image} (Debian's docker.io)")
    run("docker", "build", "-q", "-t", NODE_IMAGE, "--build-arg", f"BASE_IMAGE={base_image}",
        "--label", f"fotalab.recipe={recipe}", str(NODE_RECIPE), timeout=900,
        env={**os.environ, "DOCKER_BUILDKIT": "0"})


@dataclass
class TestSwarm:
    """`count` nodes named node-1..node-N in containers <prefix>-node-i."""
    prefix: str
    count: int
    subnet: str = "172.30.213.0/24"
    mounts: list[tuple[str, str, str]] = field(default_factory=list)   # (host path, node path, mode)
    shared: Path | None = None
    down: set[str] = field(default_factory=set)

    @property
    def network(self) -> str:
        return f"{self.prefix}-net"

    @property
    def names(self) -> list[str]:
        return [f"node-{i}" for i in range(1, self.count + 1)]

    def container(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def address(self, node: str) -> str:
        net = ipaddress.ip_network(self.subnet)
        return str(net.network_address + 10 + int(node.rsplit("-", 1)[1]))

    def cli(self, node: str) -> tuple[str, ...]:
        return ("docker", "-H", f"tcp://{self.address(node)}:2375")

    @property
    def engines(self) -> dict[str, tuple[str, ...]]:
        return {node: self.cli(node) for node in self.names}

    # -- lifecycle
    def create(self, images: list[str]) -> None:
        self.shared = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-shared-"))
        for sub in ("credentials", "releases"):
            (self.shared / sub).mkdir()
        run("docker", "network", "create", "--driver", "bridge", "--subnet", self.subnet,
            "--label", f"fotalab.swarm-test={self.prefix}", self.network)
        for node in self.names:
            mounts = [("-v", f"{self.prefix}-{node}-engine:/var/lib/docker"),
                      ("-v", f"{self.shared}:{SHARED_IN_NODE}")]
            mounts += [("-v", f"{host}:{inside}:{mode}") for host, inside, mode in self.mounts]
            run("docker", "run", "-d", "--name", self.container(node), "--hostname", node,
                "--network", self.network, "--ip", self.address(node), *NODE_RIGHTS,
                *(["--device", "/dev/fuse"] if Path("/dev/fuse").exists() else []),
                "--label", f"fotalab.swarm-test={self.prefix}", *[a for pair in mounts for a in pair], NODE_IMAGE)
        for node in self.names:
            self.wait_engine(node)
        archive = self.shared.parent / f"{self.prefix}-images.tar"
        try:
            log(f"docker save {' '.join(images)} | docker load, into {self.count} nodes")
            run("docker", "save", "-o", str(archive), *images, timeout=600)
            for node in self.names:
                run(*self.cli(node), "load", "-q", "-i", str(archive), timeout=600)
        finally:
            archive.unlink(missing_ok=True)
        first = self.names[0]
        run(*self.cli(first), "swarm", "init", "--advertise-addr", self.address(first))
        token = run(*self.cli(first), "swarm", "join-token", "-q", "manager").stdout.strip()
        for node in self.names[1:]:
            run(*self.cli(node), "swarm", "join", "--token", token, f"{self.address(first)}:2377", timeout=120)
        log(f"{self.count} nodes, every one a manager: " +
            ", ".join(f"{n} {self.address(n)}" for n in self.names))

    def wait_engine(self, node: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not self.answers(node):
            if time.monotonic() > deadline:
                logs = run("docker", "logs", "--tail", "20", self.container(node), check=False)
                raise TimeoutError(f"engine of {node} did not answer in {timeout:.0f} s: {logs.stdout}{logs.stderr}")
            time.sleep(1)

    def answers(self, node: str) -> bool:
        try:    # an engine coming back from a power cut may take its time to answer at all
            return run(*self.cli(node), "info", "--format", "{{.ID}}", check=False, timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def wait_ready(self, node: str, timeout: float = 300) -> None:
        """The node's engine answers and the swarm's managers see it Ready again."""
        self.wait_engine(node, timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for other in self.names:
                if other in self.down:
                    continue
                try:
                    done = run(*self.cli(other), "node", "ls", "--format", "{{.Hostname}} {{.Status}}",
                               check=False, timeout=30)
                except subprocess.TimeoutExpired:
                    continue
                if done.returncode == 0 and f"{node} Ready" in done.stdout:
                    return
            time.sleep(1)
        raise TimeoutError(f"{node} not Ready in the swarm after {timeout:.0f} s")

    def power_off(self, node: str) -> None:
        """A rack losing power: the node's engine and every container in it die at once."""
        self.down.add(node)
        run("docker", "kill", self.container(node))

    def power_on(self, node: str) -> None:
        run("docker", "start", self.container(node))
        self.wait_ready(node)
        self.down.discard(node)

    def destroy(self) -> None:
        containers = run("docker", "ps", "-aq", "--filter", f"label=fotalab.swarm-test={self.prefix}",
                         check=False).stdout.split()
        if containers:
            run("docker", "rm", "-f", "-v", *containers, check=False, timeout=300)
        run("docker", "volume", "rm", "-f", *[f"{self.prefix}-{n}-engine" for n in self.names], check=False)
        run("docker", "network", "rm", self.network, check=False)
        if self.shared:
            shutil.rmtree(self.shared, ignore_errors=True)
