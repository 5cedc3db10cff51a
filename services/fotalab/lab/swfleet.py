"""SWUpdate devices of the compose lab (`scripts/fleet N --swupdate M`, docs/swupdate.md).

    python -m fotalab.lab.swfleet enrol --tokens DIR swupdate-1 swupdate-2 ...

The one-shot `swupdate-enrol` job that scripts/fleet adds runs this before the SWUpdate devices
start: it enrols each device as a hawkBit DDI controller (`POST /api/v1/controllers`, as
`fota controllers add` does) and writes the TargetToken the server answers with to DIR/<name>,
on a volume each device mounts read-only and reads through FOTA_DDI_TARGET_TOKEN_FILE. A device
enrolled on an earlier `up` keeps its token; one whose token file was lost is refused with the
way out (the server keeps only a hash of the token).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..cli import Api, CliConfig, CliError
from ..envconfig import ConfigError

PREFIX = "swupdate-"


def is_swdevice(service: str) -> bool:
    """An SWUpdate device's compose service (swupdate-1, swupdate-2, ...)."""
    return service.startswith(PREFIX) and service[len(PREFIX):].isdigit()


def write_token(path: Path, token: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{token}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def enrol(api: Api, names: list[str], tokens: Path, hardware: str | None = None) -> list[str]:
    """Enrol the controllers not enrolled yet; returns a line per name saying what was done."""
    tokens.mkdir(parents=True, exist_ok=True)
    enrolled = {c["controller_id"] for c in api.call("GET", "/controllers")["controllers"]}
    done = []
    for name in names:
        path = tokens / name
        if name in enrolled and path.exists():
            done.append(f"{name}: enrolled already, its TargetToken kept in {path}")
            continue
        if name in enrolled:
            raise CliError(f"{name} is enrolled on the server but its TargetToken is not in {tokens} (the token volume "
                           "was removed and the server's was not): `docker compose down -v` starts both afresh")
        made = api.call("POST", "/controllers", {"name": name, **({"hardware": hardware} if hardware else {})})
        write_token(path, made["credentials"]["target_token"])
        done.append(f"{name}: enrolled (hardware {made['hardware']}), TargetToken written to {path}")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swfleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("enrol", help="enrol SWUpdate devices as DDI controllers, their tokens into a directory")
    add.add_argument("--tokens", type=Path, required=True, help="directory for the TargetTokens, one file per device")
    add.add_argument("--hardware", default=None, help="their hardware (default: the server's SWUpdate hardware)")
    add.add_argument("--wait", type=float, default=60, help="seconds to wait for the server to answer")
    add.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    try:
        config = CliConfig.from_env()
        api = Api(config.server_url, config.api_token, config.tls)
        deadline = time.monotonic() + args.wait
        while True:
            try:
                lines = enrol(api, args.names, args.tokens, args.hardware)
                break
            except CliError as exc:
                if "cannot reach" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(1)
    except (CliError, ConfigError) as exc:
        print(f"swfleet: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
