"""Secrets handed to a process by its environment: NAME itself, or the content of the file
NAME_FILE names (a mounted credential, the convention Docker secrets use). One reader for the
device, the server and the `fota` command."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


class SecretFileError(ValueError):
    """NAME_FILE names a file that cannot be read."""


def read_secret(env: Mapping[str, str], name: str) -> str:
    """NAME if set and not empty, else the stripped content of NAME_FILE, else ""."""
    if env.get(name):
        return env[name]
    path = env.get(f"{name}_FILE")
    if not path:
        return ""
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise SecretFileError(f"{name}_FILE={path}: cannot read it ({exc.strerror})") from None
