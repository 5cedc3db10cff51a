"""`fota`: the operator's command for the fleet, over the server's JSON API.

    fota releases | devices | device <id> | trigger <id>
    fota rollout create <release> [--devices a,b | --hardware H | --group G] [--phases 1,50%] ...
    fota rollout list | show <id> | watch <id> | pause <id> | resume <id> | abort <id>
    fota controllers add <name> [--hardware H] [--cert-dir DIR] | list
                                                           hawkBit DDI clients (docs/ddi.md)
    fota device revoke <id> | reprovision <id>             its TLS certificate (needs FOTA_CA_DIR)

Readable output by default, JSON with --json. The server is FOTA_SERVER_URL (default
http://localhost:8000); commands that change state send the bearer token from FOTA_API_TOKEN,
or from the file FOTA_API_TOKEN_FILE names (the lab's `cli` service mounts the server's).
Over HTTPS it verifies the server against the lab CA and presents the CLI's certificate
(FOTA_TLS_CA, FOTA_TLS_CERT, FOTA_TLS_KEY); the token is only accepted over TLS there.

`fota device revoke <id>` puts the device's certificate on the lab CA's CRL (FOTA_CA_DIR: the
provisioner's credentials directory, which holds the CA key) and denies its identity every
topic in the broker's ACL. The compose lab's broker and front door reload as the CRL changes
(within seconds) and the server re-reads it every second; elsewhere the broker applies it on
SIGHUP. `fota device reprovision <id>` issues it a new certificate.
Both are recorded in the device's history.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from .envconfig import ConfigError, Env
from .protocol import Event, Outcome, RolloutStatus
from .tlsfiles import TlsFiles, server_url

BAR = 24
QUIET_FIELDS = {"ts", "event", "device", "hardware", "image_sha256", "security_counter", "verified", "confirmed"}
DONE = (RolloutStatus.COMPLETED, RolloutStatus.PAUSED, RolloutStatus.ABORTED)
CERTIFICATE_ACTIONS = ("revoke", "reprovision")


class CliError(Exception):
    """What went wrong and what to do; printed without a traceback, exit code 1."""


@dataclass(frozen=True)
class CliConfig:
    server_url: str = "http://localhost:8000"
    api_token: str = ""                # needed only by commands that change state
    tls: TlsFiles | None = None        # FOTA_TLS_*: verify an https:// server against the lab CA, as the CLI
    ca_dir: Path | None = None         # FOTA_CA_DIR: the lab CA (revoke, reprovision)

    @classmethod
    def from_env(cls, env: Env | None = None) -> CliConfig:
        env = env or Env()
        return cls(server_url=server_url(env, "FOTA_SERVER_URL", cls.server_url),
                   api_token=env.secret("FOTA_API_TOKEN"),
                   tls=TlsFiles.from_env(env), ca_dir=env.optional_path("FOTA_CA_DIR"))


class Api:
    def __init__(self, url: str, token: str, tls: TlsFiles | None = None) -> None:
        self.url, self._token = url.rstrip("/"), token
        self._tls = {"verify": str(tls.ca), "cert": tls.requests_cert} if tls else {}

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {}
        if method != "GET":
            if not self._token:
                raise CliError("this command changes state and needs the API token: set FOTA_API_TOKEN, or "
                               "FOTA_API_TOKEN_FILE (the lab keeps it in the server's /var/lib/fotalab/api-token)")
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            response = requests.request(method, f"{self.url}/api/v1{path}", json=body, headers=headers, timeout=10,
                                        **self._tls)
        except requests.exceptions.SSLError as exc:
            raise CliError(f"TLS with {self.url} failed ({exc.__class__.__name__}): set FOTA_TLS_CA to the lab CA's "
                           "ca.pem and FOTA_TLS_CERT/FOTA_TLS_KEY to the CLI's certificate (fota-provision)") from None
        except requests.RequestException as exc:
            raise CliError(f"cannot reach the server at {self.url} ({exc.__class__.__name__}): "
                           "is it up? set FOTA_SERVER_URL or --server") from None
        try:
            answer = response.json()
        except ValueError:
            answer = {"error": response.text[:200]}
        if not response.ok:
            raise CliError(f"{answer.get('error', response.reason)} (HTTP {response.status_code})")
        return answer


def bar(done: int, total: int, width: int = BAR) -> str:
    filled = round(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def render_rollout(rollout: dict) -> str:
    lines = [f"rollout {rollout['id']}: {rollout['release']} to {json.dumps(rollout['selection'])}  "
             f"{rollout['status'].upper()}  {rollout['reason']}".rstrip()]
    for phase in rollout["phases"]:
        failed = phase[Outcome.ROLLED_BACK] + phase[Outcome.FAILED]
        lines.append(f"  phase {phase['phase']} ({phase['devices']} devices, {phase['state']:>7}) "
                     f"{bar(phase['committed'], phase['devices'])}" + (f"  {failed} failed" if failed else ""))
    for device in rollout["devices"]:
        detail = device["reason"] or ("" if device["status"] in (Outcome.PENDING, Outcome.COMMITTED) else "in progress")
        lines.append(f"    {device['device_id']:<16} phase {device['phase']}  {device['status']:<11} "
                     f"attempts {device['attempts']}  {detail}".rstrip())
    if rollout["quarantined"]:
        lines.append(f"  quarantined (rolled back; never offered {rollout['release']} again): "
                     + ", ".join(rollout["quarantined"]))
    return "\n".join(lines)


def share(part: int, whole: int | None) -> str:
    """part/whole with two decimals, rounded down."""
    return f" ({int(part * 100 / whole) / 100:.2f} of full)" if whole else ""


def release_row(release: dict, default: str) -> dict:
    """A release with what it costs to download: its image, and each delta from an earlier release;
    for SWUpdate hardware its .swu and each delta .swu, against the whole .swu."""
    image = next((a["length"] for a in release.get("artifacts", []) if a["kind"] == "image"), None)
    deltas = ", ".join(f"{d['length']} from {d['base_version']}" for d in release["deltas"])
    swu = (release.get("swu") or {}).get("length")
    swu_deltas = ", ".join(f"{d['length']} from {d['base_version']}{share(d['length'], swu)}"
                           for d in release.get("swu_deltas") or [])
    return {**release, "default": "*" if release["version"] == default else "", "image_bytes": image,
            "delta_bytes": deltas, "swu_bytes": swu, "swu_delta_bytes": swu_deltas}


def table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(line.rstrip() for line in [fmt.format(*columns), *(fmt.format(*r) for r in cells)])


def watch(api: Api, rollout_id: int, as_json: bool, interval_s: float, out=sys.stdout) -> dict:
    """Redraw while the rollout runs (a TTY redraws in place; a pipe gets each change once)."""
    last, drawn = None, 0
    while True:
        rollout = api.call("GET", f"/rollouts/{rollout_id}")
        view = json.dumps(rollout, sort_keys=True) if as_json else render_rollout(rollout)
        if view != last:
            if as_json:
                print(view, file=out, flush=True)
            else:
                if out.isatty() and drawn:
                    out.write(f"\x1b[{drawn}F\x1b[J")
                print(view, file=out, flush=True)
                drawn = view.count("\n") + 1
            last = view
        if rollout["status"] in DONE:
            return rollout
        time.sleep(interval_s)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="fota", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--server", help="server URL (default: FOTA_SERVER_URL or http://localhost:8000)")
    top.add_argument("--json", action="store_true", help="print JSON instead of text")
    commands = top.add_subparsers(dest="command", required=True, metavar="command")
    releases = commands.add_parser("releases", help="signed releases")
    releases.add_argument("--hardware", help="only this hardware id")
    devices = commands.add_parser("devices", help="devices the server heard of")
    devices.add_argument("--state", help="only devices in this state (e.g. committed, failed)")
    device = commands.add_parser("device", help="one device and its history")
    device.add_argument("device_id", help="the device, or revoke / reprovision followed by the device")
    device.add_argument("target", nargs="?", help=argparse.SUPPRESS)
    device.add_argument("--limit", type=int, default=20, help="last N events (default 20)")
    commands.add_parser("chaos", help="a seeded docker-kill campaign against the running lab (run on the host; "
                                      "`fota chaos --help`)")
    trigger = commands.add_parser("trigger", help="ask one device to check for its update now")
    trigger.add_argument("device_id")
    controllers = commands.add_parser("controllers", help="hawkBit DDI clients (SWUpdate, RAUC, ...) enrolled as "
                                                          "devices").add_subparsers(dest="action", required=True,
                                                                                    metavar="action")
    add = controllers.add_parser("add", help="enrol a controller and print its TargetToken (shown once)")
    add.add_argument("name", help="its controllerId, and its device id in the fleet")
    add.add_argument("--hardware", help="the hardware it runs (default: the server's only one, or its lab hardware)")
    add.add_argument("--cert-dir", type=Path, help="also write its TLS client certificate and key, and the lab CA, "
                                                   "into this directory (needs FOTA_CA_DIR)")
    controllers.add_parser("list", help="enrolled controllers")

    rollout = commands.add_parser("rollout", help="staged rollouts").add_subparsers(dest="action", required=True,
                                                                                      metavar="action")
    create = rollout.add_parser("create", help="start a rollout of a release")
    create.add_argument("release", help="release version, e.g. 2.0.0 (fota releases lists them)")
    selection = create.add_mutually_exclusive_group()
    selection.add_argument("--devices", help="comma-separated device ids, in phase order")
    selection.add_argument("--hardware", help="every device of this hardware id")
    selection.add_argument("--group", help="every device reporting this group (FOTA_DEVICE_GROUP)")
    create.add_argument("--phases", default="1,100%",
                        help="cumulative phases: a count is a canary, N%% a share (default 1,100%%)")
    create.add_argument("--success-ratio", type=float, help="committed share of a phase to go on (default 1)")
    create.add_argument("--max-failure-ratio", type=float, help="failures per device offered that trip the gate "
                                                               "(default 0: any failure)")
    create.add_argument("--on-failure", choices=(RolloutStatus.PAUSED, RolloutStatus.ABORTED),
                        help="what a tripped gate does (paused)")
    create.add_argument("--max-retries", type=int, help="transient failures retried per device (default 3)")
    create.add_argument("--backoff", type=float, help="first retry delay in seconds, doubled each time (10)")
    create.add_argument("--watch", action="store_true", help="then watch it")
    rollout.add_parser("list", help="every rollout")
    for action, text in (("show", "one rollout"), ("watch", "live progress until it ends"),
                         ("pause", "stop offering the release to more devices"), ("resume", "continue"),
                         ("abort", "end it; devices that did not commit stop being offered the release")):
        sub = rollout.add_parser(action, help=text)
        sub.add_argument("rollout_id", type=int)
        if action == "watch":
            sub.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    return top


def certificate(action: str, device_id: str, api: Api, ca_dir: Path | None) -> tuple[dict, str]:
    """Revoke or reissue a device's certificate at the lab CA; record it in its history."""
    from .lab.provision import write_acl
    ca = lab_ca(action, ca_dir)
    try:
        if action == "revoke":
            serial, event = ca.revoke(device_id), Event.CERTIFICATE_REVOKED
        else:
            ca.reissue(device_id)
            serial, event = ca.serial(device_id), Event.CERTIFICATE_REISSUED
    except KeyError as exc:
        raise CliError(str(exc.args[0])) from None
    write_acl(ca_dir)
    recorded = api.call("POST", f"/devices/{device_id}/certificate", {"event": event, "serial": f"{serial:x}"})
    text = (f"revoked {device_id}'s certificate (serial {serial:x}): the server and the broker refuse it from "
            "their next reload of the CRL (the compose lab's reload within seconds)" if action == "revoke" else
            f"issued {device_id} a new certificate (serial {serial:x}) in {ca.identity(device_id).directory}")
    return recorded, text


def lab_ca(action: str, ca_dir: Path | None):
    """The lab CA for a command that issues or revokes certificates, or a CliError saying where it is."""
    from .lab.pki import LabCA  # only the commands that issue or revoke certificates need the lab CA
    if ca_dir is None or not (ca_dir / "ca-private").is_dir():
        raise CliError(f"{action} needs the lab CA: set FOTA_CA_DIR to the provisioner's credentials directory "
                       "(the one with ca-private/)")
    return LabCA(ca_dir)


def controller_files(name: str, directory: Path, ca) -> list[Path]:
    """A new client certificate for the controller (CN = its name), copied with its key and the
    lab CA into `directory`: what its DDI client needs for mutual TLS."""
    identity = ca.issue(name)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for source, mode in ((identity.ca, 0o644), (identity.cert, 0o644), (identity.key, 0o600)):
        target = directory / source.name
        target.write_bytes(source.read_bytes())
        target.chmod(mode)
        written.append(target)
    return written


def run(args: argparse.Namespace, api: Api, out=sys.stdout, ca_dir: Path | None = None) -> int:
    emit: Callable[[object, str], None] = (
        (lambda data, text: print(json.dumps(data, indent=2), file=out)) if args.json
        else (lambda data, text: print(text, file=out)))
    if args.command == "releases":
        found = api.call("GET", "/releases" + (f"?hardware={args.hardware}" if args.hardware else ""))
        rows = [release_row(r, found["default_release"]) for r in found["releases"]]
        swu = ["swu_bytes", "swu_delta_bytes"] if any(r["swu_bytes"] for r in rows) else []
        emit(found, table(rows, ["hardware", "version", "behaviour", "default", "image_bytes", "delta_bytes", *swu]))
    elif args.command == "controllers" and args.action == "add":
        ca = lab_ca("--cert-dir", ca_dir) if args.cert_dir else None     # before enrolling: nothing half done
        body = {"name": args.name, **({"hardware": args.hardware} if args.hardware else {})}
        made = api.call("POST", "/controllers", body)
        token = made["credentials"]["target_token"]
        lines = [f"enrolled controller {made['controller_id']} (hardware {made['hardware']}); point its DDI client at:",
                 f"  base URL   {made['base_url']}", f"  tenant     {made['tenant']}",
                 f"  controller {made['controller_id']}", f"  TargetToken {token}   (shown this once)",
                 f"  try: curl {'--cacert ca.pem ' if made['ddi_url'].startswith('https:') else ''}"
                 f"-H 'Authorization: TargetToken {token}' {made['ddi_url']}"]
        if ca is not None:
            files = controller_files(made["controller_id"], args.cert_dir, ca)
            made["certificate_files"] = [str(f) for f in files]
            lines.append(f"  TLS        {', '.join(str(f) for f in files)} (CA, its certificate, its key)")
        emit(made, "\n".join(lines))
    elif args.command == "controllers":
        found = api.call("GET", "/controllers")
        emit(found, table(found["controllers"], ["controller_id", "hardware", "version", "state", "online",
                                                 "actions"]))
    elif args.command == "devices":
        found = api.call("GET", "/devices" + (f"?state={args.state}" if args.state else ""))
        emit(found, table(found["devices"], ["device_id", "hardware", "version", "state", "online",
                                             "assigned_version", "reason"]))
    elif args.command == "device" and args.device_id in CERTIFICATE_ACTIONS and args.target:
        emit(*certificate(args.device_id, args.target, api, ca_dir))
    elif args.command == "device":
        found = api.call("GET", f"/devices/{args.device_id}")
        events = api.call("GET", f"/devices/{args.device_id}/history?limit=1000")["events"][-args.limit:]
        lines = [f"{found['device_id']}: {found['version']} ({found['state']}), "
                 f"{'online' if found['online'] else 'offline'}, assigned {found['assignment']['version']} "
                 f"({found['assignment']['source']})"]
        lines += [f"  {time.strftime('%H:%M:%S', time.gmtime(e['ts']))}  {e['event']:<16} "
                  + " ".join(f"{k}={v}" for k, v in e["payload"].items() if k not in QUIET_FIELDS)
                  for e in events]
        emit({**found, "events": events}, "\n".join(lines))
    elif args.command == "trigger":
        sent = api.call("POST", f"/devices/{args.device_id}/trigger")
        emit(sent, f"sent {args.device_id} the update hint; it is assigned {sent['assignment']['version']} "
                   f"({sent['assignment']['source']})")
    elif args.action == "create":
        policy = {key: value for key, value in (
            ("success_ratio", args.success_ratio), ("max_failure_ratio", args.max_failure_ratio),
            ("on_failure", args.on_failure), ("max_retries", args.max_retries), ("backoff_s", args.backoff))
            if value is not None}
        selection = ({"devices": [d for d in args.devices.split(",") if d]} if args.devices
                     else {"hardware": args.hardware} if args.hardware
                     else {"group": args.group} if args.group else {"all": True})
        created = api.call("POST", "/rollouts", {"release": args.release, "selection": selection,
                                                 "phases": [p.strip() for p in args.phases.split(",")],
                                                 "policy": policy})
        if args.watch:
            return 0 if watch(api, created["id"], args.json, 1.0, out)["status"] == RolloutStatus.COMPLETED else 3
        emit(created, render_rollout(created))
    elif args.action == "list":
        found = api.call("GET", "/rollouts")
        emit(found, table([{**r, "devices": len(r["devices"]), "phase": f"{r['phase'] + 1}/{len(r['phases'])}"}
                           for r in found["rollouts"]], ["id", "release", "status", "phase", "devices", "reason"]))
    elif args.action == "watch":
        finished = watch(api, args.rollout_id, args.json, args.interval, out)
        return 0 if finished["status"] == RolloutStatus.COMPLETED else 3
    elif args.action == "show":
        found = api.call("GET", f"/rollouts/{args.rollout_id}")
        emit(found, render_rollout(found))
    else:
        changed = api.call("POST", f"/rollouts/{args.rollout_id}/{args.action}")
        emit(changed, render_rollout(changed))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["chaos"]:      # on the host, next to Docker: `fota chaos --help`
        from .lab.chaos import main as chaos
        return chaos(argv[1:])
    args = parser().parse_args(argv)
    try:
        config = CliConfig.from_env()
        return run(args, Api(args.server or config.server_url, config.api_token, config.tls), ca_dir=config.ca_dir)
    except (CliError, ConfigError) as exc:
        print(f"fota: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
