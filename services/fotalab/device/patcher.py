"""Apply a delta in a child process with a memory and a time limit.

The delta was verified against the signed manifest before this runs, but a patcher is the
classic place where a crafted input exhausts memory or crashes native code, so it runs
apart from the device process: a failure here is a clean, reported error.
"""
from __future__ import annotations

import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from .engine import Patcher
from .errors import UpdateFailed


def read_chunks(path: str, size: int) -> Iterator[bytes]:
    with open(path, "rb") as source:
        while chunk := source.read(size):
            yield chunk


def sandboxed_patcher(*, memory_mb: int, timeout_s: float, chunk_size: int) -> Patcher:
    def limit() -> None:
        limit_bytes = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    def patch(base: str, artifact: str, encoding: str, max_output: int) -> Iterator[bytes]:
        if not encoding:   # a full image: copy as it is
            yield from read_chunks(artifact, chunk_size)
            return
        try:
            done = subprocess.run([sys.executable, "-m", "fotalab.device.patcher", base, artifact, encoding,
                                   str(max_output)], capture_output=True, timeout=timeout_s, preexec_fn=limit)
        except subprocess.TimeoutExpired:
            raise UpdateFailed(f"patching took longer than {timeout_s:.0f} s and was stopped: "
                               "the delta is too costly for this device; publish a full image") from None
        if done.returncode != 0:
            detail = done.stderr.decode(errors="replace").strip().splitlines()
            raise UpdateFailed(f"patching failed (exit {done.returncode}): "
                               f"{detail[-1] if detail else 'killed (memory limit?)'}")
        if len(done.stdout) > max_output:
            raise UpdateFailed(f"patch produced {len(done.stdout)} bytes, over the signed {max_output}")
        for offset in range(0, len(done.stdout), chunk_size):
            yield done.stdout[offset: offset + chunk_size]

    return patch


def main(argv: list[str]) -> int:
    from ..formats.delta import Delta, DeltaError, apply_delta
    base, artifact, encoding, max_output = argv
    try:
        new = apply_delta(Path(base).read_bytes(), Delta(encoding, Path(artifact).read_bytes()), int(max_output))
    except DeltaError as exc:
        print(f"delta rejected: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("delta needs more memory than this device allows", file=sys.stderr)
        return 3
    sys.stdout.buffer.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
