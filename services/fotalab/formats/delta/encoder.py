"""The encoder, on the signer: every candidate encoding of an (old, new) pair, and the
smallest of them.

It tries plain ``bsdiff4``, bsdiff's streams re-packed with LZMA2 (``bsdiff-lzma``), the
relocating encodings on images that look like code of their instruction set
(``encoder_relocated``), and the whole new image compressed (``full-lzma``), which wins when
the images are unrelated.
"""

from __future__ import annotations

import io

import bsdiff4.core
import bsdiff4.format

from .archdetect import MIN_ARCH_SCORE, arch_score, guess_base
from .container import BCJ_ARMTHUMB, BCJ_NONE, ENCODINGS, IMAGE_DICT, Delta, seal, uvarint
from .encoder_relocated import encode_relocated
from .encoder_sparse import encode_sparse
from .encoder_streams import controls_from_core, lzma_compress, pack_streams

_TUNE_LIMIT = 1 << 20  # images below this size get lc/lp/pb and BCJ trials
_FULL_TUNE_MARGIN = 1.5  # the full image is tuned when within this factor of the best delta


def best_delta(old: bytes, new: bytes) -> Delta:
    """The smallest candidate (the compressed full image included)."""
    return min(candidates(old, new), key=lambda delta: (len(delta.data), ENCODINGS.index(delta.encoding)))


def encode(old: bytes, new: bytes, encoding: str) -> Delta:
    """One encoding of the pair (see ENCODINGS)."""
    return {delta.encoding: delta for delta in candidates(old, new, only=(encoding,))}[encoding]


def candidates(old: bytes, new: bytes, only: tuple[str, ...] | None = None) -> list[Delta]:
    """Every encoding tried for this pair (``only`` restricts the set).

    The relocating encodings are tried only on images that look like code of their
    instruction set (see ``archdetect.arch_score``); ``only`` forces them."""
    old = bytes(old)
    new = bytes(new)
    wanted = set(ENCODINGS if only is None else only)
    unknown = wanted - set(ENCODINGS)
    if unknown:
        raise ValueError(f"unknown encodings {sorted(unknown)}")
    tune = len(new) < _TUNE_LIMIT  # lc/lp/pb and BCJ trials only where they are cheap
    out: list[Delta] = []
    raw_controls, diff, extra = None, None, None
    if wanted - {"full-lzma"}:
        raw_controls, diff, extra = bsdiff4.core.diff(old, new)
        controls = controls_from_core(raw_controls)
    if "bsdiff4" in wanted:
        patch = io.BytesIO()
        bsdiff4.format.write_patch(patch, len(new), raw_controls, diff, extra)
        out.append(Delta("bsdiff4", patch.getvalue()))
    if "bsdiff-lzma" in wanted:
        out.append(Delta("bsdiff-lzma", pack_streams("bsdiff-lzma", old, new, controls, diff, extra, [], tune)))
    if "sparse-lzma" in wanted:
        out.append(Delta("sparse-lzma", encode_sparse(old, new, controls, diff, tune)))
    for arch in ("thumb", "aarch64", "xtensa"):
        # Relocation only pays on code of that instruction set: skip it elsewhere unless asked.
        streams, sparse = f"{arch}-lzma", f"{arch}-sparse"
        if wanted & {streams, sparse} and (only is not None or arch_score(arch, old) >= MIN_ARCH_SCORE):
            found = encode_relocated(streams, old, new, controls, guess_base(arch, old), tune, sparse in wanted)
            out += [Delta(name, blob) for name, blob in found.items() if name in wanted]
    if "full-lzma" in wanted:
        full = _encode_full(new, False)
        # The full image is tuned (both BCJ choices, lc/lp/pb) only when it might win.
        if tune and (not out or len(full) < _FULL_TUNE_MARGIN * min(len(delta.data) for delta in out)):
            full = min(full, _encode_full(new, True), key=len)
        out.append(Delta("full-lzma", full))
    return out


def _encode_full(new: bytes, tune: bool) -> bytes:
    """``full-lzma``: the whole image, with or without xz's ARM-Thumb BCJ filter."""
    best = None
    if tune:
        bcjs = (BCJ_NONE, BCJ_ARMTHUMB)
    else:  # large image: one try, with the Thumb BCJ filter only on Thumb code
        bcjs = (BCJ_ARMTHUMB if arch_score("thumb", new) >= MIN_ARCH_SCORE else BCJ_NONE,)
    for bcj in bcjs:
        dict_size, stream = lzma_compress(new, bcj, tune, dict_max=IMAGE_DICT)
        blob = seal("full-lzma", uvarint(len(new)) + uvarint(bcj) + uvarint(dict_size) + stream)
        if best is None or len(blob) < len(best):
            best = blob
    return best
