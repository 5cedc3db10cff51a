"""Delta encodings for firmware images.

Every encoding turns ``(old, new)`` into bytes from which ``new`` is rebuilt given ``old``.
Generation (``candidates`` / ``best_delta``, in ``encoder``) runs on the signer;
``apply_delta`` / ``apply_delta_to`` (in ``decoder``) run on the device and treat their input
as hostile: any malformed, truncated or bit-flipped delta raises :class:`DeltaError`, the
output never exceeds the size declared in the delta nor ``max_output``, and memory stays
bounded (decoder dictionaries are capped by the declared output size, output is produced in
chunks of ``CHUNK`` bytes).

Encodings (see docs/deltas.md for the figures):

``bsdiff4``
    The plain BSDIFF40 format of the ``bsdiff4`` package (three bz2 streams). Parsed and applied
    here in Python, never handed to the C patcher, so crafted control values cannot hurt.
``bsdiff-lzma``
    bsdiff's control/diff/extra streams, control re-encoded as varints, each stream compressed
    with raw LZMA2 (tuned literal/position bits) in the versioned ``FOTD`` container.
``thumb-lzma`` / ``aarch64-lzma`` / ``xtensa-lzma``
    As ``bsdiff-lzma`` but the diff is taken against a *relocated* old image: every
    PC-relative call/branch (Thumb-2 BL/B.W; AArch64 BL/B, ADRP+ADD/LDR/STR, ADR; Xtensa
    CALL0/CALL8) and every absolute pointer (literal pools, vector and pointer tables) of the
    old image is rewritten to where its target moved in the new image. The move map is derived
    from the control stream itself (old offset -> shift of the long matches that cover it), so
    it costs no bytes; the load address and a learned map of moves outside the image (RAM
    variables) travel in the header. Moved code then differs only where it really changed,
    the same idea as xz's BCJ filters and detools' data formats.
``full-lzma``
    The whole new image compressed with raw LZMA2 (optionally behind xz's ARM-Thumb BCJ
    filter). ``old`` is ignored.

Modules: ``container`` (the format and its limits, shared by both sides), ``decoder`` and
``decoder_streams`` (the device side), ``encoder``, ``encoder_relocated``,
``encoder_streams`` and ``archdetect`` (the signer side), ``movemap``, ``bytewise`` and the
relocators ``relocate_thumb``, ``relocate_aarch64``, ``relocate_xtensa`` (on ``relocate_base``,
chosen in ``relocate``), which both sides run.
"""

from __future__ import annotations

from .container import CHUNK, ENCODINGS, FORMAT_VERSION, MAGIC, Delta, DeltaError
from .decoder import apply_delta, apply_delta_to
from .encoder import best_delta, candidates, encode

__all__ = [
    "CHUNK",
    "Delta",
    "DeltaError",
    "ENCODINGS",
    "FORMAT_VERSION",
    "MAGIC",
    "apply_delta",
    "apply_delta_to",
    "best_delta",
    "candidates",
    "encode",
]
