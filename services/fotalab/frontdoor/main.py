"""`fota-frontdoor`: nginx as the lab's front door, configured from the environment.

    fota-frontdoor          render the configuration into FOTA_FRONTDOOR_RUN_DIR and run nginx
    fota-frontdoor config   print the configuration it would run with

It stays nginx's parent: it hands on the signals that stop a container, exits with nginx's
status, and looks the server's name up every FOTA_FRONTDOOR_RECHECK_S seconds, reloading nginx
(SIGHUP) when the address changed, because nginx resolves its upstream only when it loads its
configuration and keeps connections to it alive.
"""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys

from ..envconfig import ConfigError
from .config import FrontDoorConfig
from .nginxconf import render

NGINX = "nginx"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def addresses(host_port: str) -> frozenset[str]:
    """Where the upstream's name points now (empty while it does not resolve)."""
    host, _, port = host_port.rpartition(":")
    try:
        return frozenset(info[4][0] for info in socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM))
    except OSError:
        return frozenset()


def say(message: str) -> None:
    print(f"fota-frontdoor: {message}", file=sys.stderr, flush=True)


def run(config: FrontDoorConfig, nginx: str) -> int:
    config.run_dir.mkdir(parents=True, exist_ok=True)
    config.download_log.parent.mkdir(parents=True, exist_ok=True)
    conf = config.run_dir / "nginx.conf"
    conf.write_text(render(config))
    seen = addresses(config.upstream)
    process = subprocess.Popen([nginx, "-e", "stderr", "-p", str(config.run_dir), "-c", str(conf)])
    for signum in FORWARDED:
        signal.signal(signum, lambda number, frame: process.send_signal(number))
    while True:
        try:
            return process.wait(timeout=config.recheck_s)
        except subprocess.TimeoutExpired:
            pass
        now = addresses(config.upstream)
        if now and now != seen:
            say(f"{config.upstream} moved from {', '.join(sorted(seen)) or 'nowhere'} to {', '.join(sorted(now))}: "
                "reloading nginx")
            process.send_signal(signal.SIGHUP)
            seen = now


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["config"]):
        print("usage: fota-frontdoor [config]", file=sys.stderr)
        return 2
    try:
        config = FrontDoorConfig.from_env()
    except ConfigError as exc:
        say(str(exc))
        return 2
    if args == ["config"]:
        print(render(config), end="")
        return 0
    nginx = shutil.which(NGINX) or shutil.which(NGINX, path="/usr/sbin")
    if nginx is None:
        say("nginx is not installed: the lab image has it (services/Dockerfile); on a host, "
            "apt-get install nginx-light")
        return 2
    return run(config, nginx)


if __name__ == "__main__":
    sys.exit(main())
