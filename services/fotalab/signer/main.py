"""`fota-signer`: the one-shot job that builds and signs the lab's releases.

Runs once per `docker compose up` (the server waits for it to complete): creates the
release key on first run, builds firmware images from firmware/releases.toml, computes
deltas, signs manifests and writes the release store. It alone mounts the private key.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..envconfig import ConfigError, Env
from ..formats.signing import ALGORITHMS
from .build import build_releases
from .keys import ensure_keys, rotate_keys, rotation_chain
from .releases import ReleaseListError, load_plan
from .swu import DEVICE_FLASH_DIR, ensure_swu_signer


@dataclass(frozen=True)
class SignerConfig:
    firmware_dir: Path = Path("/firmware")
    keys_dir: Path = Path("/keys")
    releases_dir: Path = Path("/releases")
    key_algorithm: str = "rsa-pss-3072"
    swu_flash_dir: str = DEVICE_FLASH_DIR      # where SWUpdate devices see their flash (slot paths in the .swu)

    @classmethod
    def from_env(cls, env: Env | None = None) -> SignerConfig:
        env = env or Env()
        d = cls()
        return cls(firmware_dir=env.path("FOTA_FIRMWARE_DIR", d.firmware_dir),
                   keys_dir=env.path("FOTA_KEYS_DIR", d.keys_dir),
                   releases_dir=env.path("FOTA_RELEASES_DIR", d.releases_dir),
                   key_algorithm=env.choice("FOTA_KEY_ALGORITHM", d.key_algorithm, ALGORITHMS),
                   swu_flash_dir=env.text("FOTA_SWU_FLASH_DIR", d.swu_flash_dir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fota-signer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="build", choices=("build", "rotate-key"),
                        help="build the releases (default), or replace the release key by a new one "
                             "announced in a statement signed by the current key")
    args = parser.parse_args(argv)
    try:
        config = SignerConfig.from_env()
    except ConfigError as exc:
        print(f"fota-signer: {exc}", file=sys.stderr)
        return 2
    if args.command == "rotate-key":
        old, new = rotate_keys(config.keys_dir, config.key_algorithm)
        print(f"fota-signer: release key {old.key_id} replaced by {new.key_id}; the old key signed the "
              f"handover. Run the signer again (docker compose up) to re-sign the releases.")
        return 0
    started = time.monotonic()
    try:
        plan = load_plan(config.firmware_dir / "releases.toml")
    except ReleaseListError as exc:
        print(f"fota-signer: {exc}", file=sys.stderr)
        return 2
    signer, created = ensure_keys(config.keys_dir, config.key_algorithm)
    print(f"fota-signer: {'created' if created else 'using'} release key {signer.key_id} in {config.keys_dir}")
    swu_signer = None
    if any(spec.format == "swupdate" for spec in plan.hardware.values()):
        swu_signer, swu_created = ensure_swu_signer(config.keys_dir)
        print(f"fota-signer: {'created' if swu_created else 'using'} the SWUpdate signing certificate in "
              f"{config.keys_dir}")
    report = build_releases(plan, signer, config.firmware_dir, config.releases_dir,
                            rotations=rotation_chain(config.keys_dir), swu_signer=swu_signer,
                            swu_flash_dir=config.swu_flash_dir)
    for line in report.built:
        print(f"  built  {line}")
    print(f"fota-signer: {len(report.built)} built, {len(report.reused)} reused, "
          f"{len(plan.releases)} releases in {config.releases_dir} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
