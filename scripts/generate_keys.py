#!/usr/bin/env python3
"""Create the lab's release key pair under keys/ (the seed's name), or rotate it.

    scripts/generate_keys.py                 create keys/release-key.pem (+ .pub.pem) if missing
    scripts/generate_keys.py --rotate        new key, announced in a statement signed by the old one
    scripts/generate_keys.py --algorithm ed25519

The signer does the first on its own at its first run; inside the lab the same rotation is
`docker compose run --rm signer fota-signer rotate-key`. Then `docker compose up -d --wait`
re-signs the releases, and devices accept the new key with their next update.
"""
import hostenv  # noqa: F401,I001  (first: re-runs this script in the project's .venv)
import argparse
import sys
from pathlib import Path


from fotalab.signer.keys import PRIVATE, ensure_keys, rotate_keys  # noqa: E402
from fotalab.formats.signing import ALGORITHMS  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys-dir", type=Path, default=Path(__file__).resolve().parent.parent / "keys")
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="rsa-pss-3072")
    parser.add_argument("--rotate", action="store_true", help="replace the key by a new one, with a signed handover")
    args = parser.parse_args()
    if args.rotate:
        old, new = rotate_keys(args.keys_dir, args.algorithm)
        print(f"rotated: {old.key_id} -> {new.key_id} (statement in {args.keys_dir / 'rotations'})")
        return 0
    existed = (args.keys_dir / PRIVATE).exists()
    signer, _ = ensure_keys(args.keys_dir, args.algorithm)
    print(f"{'kept existing' if existed else 'created'} release key {signer.key_id} in {args.keys_dir}"
          + (" (use --rotate to replace it)" if existed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
