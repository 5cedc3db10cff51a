"""`scripts/swarm-chaos`: the chaos campaign on a multi-node Docker Swarm built on this machine.

Builds a test swarm of --nodes real Docker Engines (lab/swarmnodes.py), deploys the stack with
--devices devices spread over the nodes (one device service per node, pinned to it, so a
restarted task finds its flash), and runs scripts/chaos's campaign against it: --kills seeded
`docker kill`s of device tasks' containers and, beside them, --node-kills whole nodes losing
power (`docker kill` of the node container: its engine and every container in it die at once),
off for a while, then powered on again. The first node killed is one without the server and the
broker, so the rest of the fleet keeps updating meanwhile; the last one (with two or more) is the
node that runs them, and the campaign reports what the fleet lost while it was off. Then it waits
for the fleet to settle, checks every device from its own flash (`fota-device inspect` on its
node), tears everything down and ends with

    swarm-chaos: <K> kills and <M> node kills on <N> devices over <n> nodes: <B> bricked, <C>/<N> converged
"""
from __future__ import annotations

import os
import random
import sys
import time
import uuid
from dataclasses import dataclass

from ..protocol import Event
from . import chaos
from .labaccess import reach_plaintext
from .stackctl import ROOT, Group, Stack, dotenv, prepare_images
from .swarmlab import SwarmLab
from .swarmnodes import SHARED_IN_NODE, TestSwarm, build_node_image, log

INFRA_NODE = "node-1"    # the broker, the server, the link and the jobs run here


@dataclass
class NodeKill:
    node: str
    devices: list[str]
    at: float
    off_s: float
    back_s: float = 0.0           # from power-on until the node's devices ran again
    others_events: int = 0        # what the devices on other nodes reported while it was off
    others_commits: int = 0


def groups_for(devices: int, nodes: list[str]) -> list[Group]:
    """Devices spread evenly over the nodes, in order: node-1 gets device-1.., and so on."""
    groups, offset = [], 0
    for i, node in enumerate(nodes):
        count = devices // len(nodes) + (1 if i < devices % len(nodes) else 0)
        if count:
            groups.append(Group(node, count, offset))
        offset += count
    return groups


def node_targets(rng: random.Random, nodes: list[str], count: int) -> list[str]:
    """Which nodes lose power, in order: device-only nodes first, the infrastructure node last."""
    others = [n for n in nodes if n != INFRA_NODE]
    targets = [rng.choice(others) for _ in range(max(0, count - 1))] if others else []
    if count:
        targets.append(INFRA_NODE if count > 1 or not others else rng.choice(others))
    return targets


class NodeKiller:
    """Runs beside the campaign: takes whole nodes down and up again, and says what happened."""

    def __init__(self, swarm: TestSwarm, lab: SwarmLab, groups: list[Group], targets: list[str],
                 off_s: tuple[float, float], rng: random.Random) -> None:
        self.swarm, self.lab, self.targets, self.off_s, self.rng = swarm, lab, targets, off_s, rng
        self.on_node = {g.node: [f"device-{g.offset + s}" for s in range(1, g.count + 1)] for g in groups}
        self.done: list[NodeKill] = []

    def __call__(self, campaign: chaos.Campaign) -> None:
        for i, node in enumerate(self.targets):
            # spread over the campaign: the i-th node loses power after this many device kills
            due = (i + 1) * campaign.quota // (len(self.targets) + 1)
            while len(campaign.kills) < due:
                time.sleep(0.5)
            try:
                self.power_cycle(campaign, node)
            except Exception as exc:    # said in the report and the summary, not lost with the thread
                campaign.notes.append(f"{node}: node kill failed: {exc!r}")
                log(f"{node}: node kill failed: {exc!r}")
                self.swarm.down.discard(node)

    def power_cycle(self, campaign: chaos.Campaign, node: str) -> None:
        devices = self.on_node.get(node, [])
        infra = ["server", "mosquitto"] if node == INFRA_NODE else []
        with campaign._lock:
            campaign.off.update(devices + infra)
        kill = NodeKill(node, devices, time.time(), round(self.rng.uniform(*self.off_s), 1))
        self.swarm.power_off(node)
        log(f"{node} lost power ({', '.join(devices + infra)}); off for {kill.off_s} s")
        time.sleep(kill.off_s)
        off_until = time.time()
        powered = time.monotonic()
        self.swarm.power_on(node)
        for name in devices + infra:
            self.lab.start(name)
        kill.back_s = round(time.monotonic() - powered, 1)
        with campaign._lock:
            campaign.off.difference_update(devices + infra)
        campaign.hint_all()
        for device, events in list(campaign.watcher.events.items()):
            if device in devices:
                continue
            during = [e for e in events if kill.at <= e.get("ts", 0) <= off_until]
            kill.others_events += len(during)
            kill.others_commits += sum(e.get("event") == Event.COMMITTED for e in during)
        note = (f"{node} off {kill.off_s} s, its {len(devices)} devices running again {kill.back_s} s after "
                f"power-on; meanwhile the devices on other nodes reported {kill.others_events} events, "
                f"{kill.others_commits} commits")
        if infra:
            note += (f"; {node} runs the server and the broker: the fleet could not reach them while it was off, "
                     "and they came back with their volumes when it returned")
        log(note)
        campaign.notes.append(note)
        self.done.append(kill)


def main(argv: list[str] | None = None) -> int:
    parser = chaos.parser("swarm-chaos", __doc__)
    parser.add_argument("--nodes", type=int, default=3, help="Docker Engines in the test swarm (each a manager)")
    parser.add_argument("--devices", type=int, default=12, help="devices, spread evenly over the nodes")
    parser.add_argument("--node-kills", type=int, default=2, help="whole nodes losing power during the campaign")
    parser.add_argument("--node-off", type=float, nargs=2, default=(20.0, 40.0), metavar=("MIN", "MAX"),
                        help="seconds a killed node stays off")
    parser.add_argument("--subnet", default=os.environ.get("FOTA_SWARM_SUBNET") or "172.30.213.0/24",
                        help="the nodes' private network (default: $FOTA_SWARM_SUBNET, else 172.30.213.0/24)")
    parser.add_argument("--keep", action="store_true", help="leave the test swarm running (to look at it)")
    parser.set_defaults(settle=420, reset_waves=True, gap=(1.0, 4.0))
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("--nodes: 2 or more (one node: scripts/stack up, then scripts/chaos)")
    images = [os.environ.get("FOTALAB_IMAGE") or "fotalab/lab:latest",
              os.environ.get("MOSQUITTO_IMAGE") or dotenv().get("MOSQUITTO_IMAGE") or "eclipse-mosquitto:2"]
    prepare_images()
    build_node_image(os.environ.get("BASE_IMAGE") or dotenv().get("BASE_IMAGE") or "fotalab/debian:bookworm")
    swarm = TestSwarm(f"fotalab-swarm-{uuid.uuid4().hex[:6]}", args.nodes, args.subnet,
                      mounts=[(str(ROOT / "firmware"), str(ROOT / "firmware"), "ro"),
                              (str(ROOT / "keys"), str(ROOT / "keys"), "rw")])
    started = time.monotonic()
    try:
        swarm.create(images)
        groups = groups_for(args.devices, swarm.names)
        stack = Stack("fotalab-swarm", swarm.engines, swarm.names, env={
            # a 16 kbit/s radio unless told otherwise: downloads last long enough to be cut
            "FOTA_RADIO_KBPS": os.environ.get("FOTA_RADIO_KBPS") or "16",
            "FOTA_FLEET_SIZE": str(args.devices), "FOTALAB_IMAGE": images[0], "MOSQUITTO_IMAGE": images[1],
            "FOTA_STACK_INFRA_CONSTRAINT": f"node.hostname == {INFRA_NODE}",
            "FOTA_STACK_FIRMWARE_DIR": str(ROOT / "firmware"), "FOTA_STACK_KEYS_DIR": str(ROOT / "keys")})
        log("docker stack deploy: " + ", ".join(f"{g.node}: device-{g.offset + 1}..device-{g.offset + g.count}"
                                                for g in groups) + f"; server and broker on {INFRA_NODE}")
        stack.deploy(groups, SHARED_IN_NODE)
        stack.wait_ready(timeout=900)
        log(f"stack ready after {time.monotonic() - started:.0f} s")
        lab = SwarmLab(stack.name, swarm.engines, swarm.names, down=swarm.down)
        port = int(os.environ.get("STACK_MQTT_PORT") or 11883) if args.mqtt_port is None else args.mqtt_port
        server = f"http://{lab.endpoint('frontdoor', int(os.environ.get('STACK_SERVER_PORT') or 18800))}"
        killer = NodeKiller(swarm, lab, groups, node_targets(random.Random(args.seed), swarm.names, args.node_kills),
                            tuple(args.node_off), random.Random(args.seed + 1))
        lab.device_containers()
        access = reach_plaintext(lab, server, swarm.address(INFRA_NODE), port)    # the stack runs without TLS
        outcome = chaos.execute(lab, args, access, during=killer)
    finally:
        if args.keep:
            log(f"kept: nodes {', '.join(swarm.container(n) for n in swarm.names)} (docker -H "
                f"tcp://{swarm.address(swarm.names[0])}:2375 ...); remove with docker rm -f -v and "
                f"docker network rm {swarm.network}")
        else:
            swarm.destroy()
            log(f"test swarm removed ({time.monotonic() - started:.0f} s in all)")
    for note in outcome.campaign.notes:
        print(f"node kill: {note}")
    n = len(outcome.verdicts)
    print(f"swarm-chaos: {len(outcome.campaign.kills)} kills and {len(killer.done)} node kills on {n} devices "
          f"over {args.nodes} nodes: {outcome.bricked} bricked, {outcome.converged}/{n} converged")
    return 0 if outcome.ok and len(killer.done) == args.node_kills else 1


if __name__ == "__main__":
    sys.exit(main())
