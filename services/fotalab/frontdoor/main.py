"""`fota-frontdoor`: nginx as the lab's front door, configured from the environment.

    fota-frontdoor          render the configuration into FOTA_FRONTDOOR_RUN_DIR and run nginx
    fota-frontdoor config   print the configuration it would run with (the secret left out)
    fota-frontdoor health   GET /healthz through the door, as its clients do: exit 0 if it answers 200

It stays nginx's parent: it hands on the signals that stop a container, exits with nginx's
status, and every FOTA_FRONTDOOR_RECHECK_S seconds looks the server's name up and the CRL's
file over, reloading nginx (SIGHUP) when the address or the CRL changed: nginx resolves its
upstream and reads the CRL only when it loads its configuration. A reload also ends the old
workers' kept-alive connections, so a revoked certificate is refused on those too.
"""
from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import replace

from ..envconfig import ConfigError
from ..tlsfiles import TlsFiles, file_stamp
from .config import FrontDoorConfig
from .nginxconf import render

NGINX = "nginx"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
HEALTH_TIMEOUT_S = 3.0


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
    if config.tls:
        config.tls.check()
        if config.tls_crl and file_stamp(config.tls_crl) is None:
            raise ConfigError(f"FOTA_TLS_CRL={config.tls_crl}: no such file; point it at the lab CA's crl.pem "
                              "(fota-provision writes it) or unset it")
    config.run_dir.mkdir(parents=True, exist_ok=True)
    config.download_log.parent.mkdir(parents=True, exist_ok=True)
    conf = config.run_dir / "nginx.conf"
    with os.fdopen(os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        os.fchmod(out.fileno(), 0o600)          # it holds the secret
        out.write(render(config))
    seen, crl_seen = addresses(config.upstream), file_stamp(config.tls_crl)
    process = subprocess.Popen([nginx, "-e", "stderr", "-p", str(config.run_dir), "-c", str(conf)])
    for signum in FORWARDED:
        signal.signal(signum, lambda number, frame: process.send_signal(number))
    while True:
        try:
            return process.wait(timeout=config.recheck_s)
        except subprocess.TimeoutExpired:
            pass
        now, crl_now = addresses(config.upstream), file_stamp(config.tls_crl)
        changes = []
        if now and now != seen:
            changes.append(f"{config.upstream} moved from {', '.join(sorted(seen)) or 'nowhere'} to "
                           f"{', '.join(sorted(now))}")
            seen = now
        if crl_now and crl_now != crl_seen:
            changes.append(f"the CRL {config.tls_crl} changed")
            crl_seen = crl_now
        if changes:
            say(f"{'; '.join(changes)}: reloading nginx")
            process.send_signal(signal.SIGHUP)


def health(config: FrontDoorConfig) -> int:
    """One GET /healthz through the door (which proxies it to the server), over HTTPS verified
    against the lab CA when the door has TLS; the compose healthcheck."""
    host, _, port = config.listen.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "*": "127.0.0.1", "[::]": "::1"}.get(host, host.strip("[]"))
    if config.tls:
        connection = http.client.HTTPSConnection(host, int(port), timeout=HEALTH_TIMEOUT_S,
                                                 context=TlsFiles(config.tls.ca).client_context())
    else:
        connection = http.client.HTTPConnection(host, int(port), timeout=HEALTH_TIMEOUT_S)
    url = f"{'https' if config.tls else 'http'}://{config.listen}/healthz"
    try:
        connection.request("GET", "/healthz")
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        say(f"unhealthy: GET {url}: {exc}")
        return 1
    finally:
        connection.close()
    if status != 200:
        say(f"unhealthy: GET {url} answered {status}; the server behind the door ({config.upstream}) may be down")
        return 1
    print(f"fota-frontdoor: healthy: GET {url} answered 200")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["config"], ["health"]):
        print("usage: fota-frontdoor [config | health]", file=sys.stderr)
        return 2
    try:
        config = FrontDoorConfig.from_env()
        if args == ["health"]:
            return health(config)
        if args == ["config"]:
            print(render(replace(config, secret="(secret from FOTA_FRONTDOOR_SECRET_FILE)" if config.secret else "")),
                  end="")
            return 0
        nginx = shutil.which(NGINX) or shutil.which(NGINX, path="/usr/sbin")
        if nginx is None:
            say("nginx is not installed: the lab image has it (services/Dockerfile); on a host, "
                "apt-get install nginx-light")
            return 2
        return run(config, nginx)
    except ConfigError as exc:
        say(str(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
