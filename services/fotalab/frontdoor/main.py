"""`fota-frontdoor`: nginx as the lab's front door, configured from the environment.

    fota-frontdoor          render the configuration into FOTA_FRONTDOOR_RUN_DIR and become nginx
    fota-frontdoor config   print the configuration it would run with
"""
from __future__ import annotations

import os
import shutil
import sys

from ..envconfig import ConfigError
from .config import FrontDoorConfig
from .nginxconf import render

NGINX = "nginx"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["config"]):
        print("usage: fota-frontdoor [config]", file=sys.stderr)
        return 2
    try:
        config = FrontDoorConfig.from_env()
    except ConfigError as exc:
        print(f"fota-frontdoor: {exc}", file=sys.stderr)
        return 2
    text = render(config)
    if args == ["config"]:
        print(text, end="")
        return 0
    nginx = shutil.which(NGINX) or shutil.which(NGINX, path="/usr/sbin")
    if nginx is None:
        print("fota-frontdoor: nginx is not installed: the lab image has it (services/Dockerfile); on a host, "
              "apt-get install nginx-light", file=sys.stderr)
        return 2
    config.run_dir.mkdir(parents=True, exist_ok=True)
    config.download_log.parent.mkdir(parents=True, exist_ok=True)
    conf = config.run_dir / "nginx.conf"
    conf.write_text(text)
    os.execv(nginx, [nginx, "-e", "stderr", "-p", str(config.run_dir), "-c", str(conf)])


if __name__ == "__main__":
    sys.exit(main())
