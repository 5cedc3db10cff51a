"""The relocating encodings (``thumb-lzma``, ``aarch64-lzma``, ``xtensa-lzma``) on the signer.

The diff is taken against the old image *relocated* to where its addresses moved in the
new image, so moved code differs only where it really changed. The move map is derived from
the control stream itself (the decoder does the same), so it costs no bytes; the load
address, the relocation settings and a learned map of moves outside the image travel in the
header. The encoder searches the settings that give the smallest delta, and re-runs bsdiff's
match search against the relocated image, which finds longer matches.
"""

from __future__ import annotations

import bisect
import collections
import struct
from collections.abc import Sequence

from .container import ENCODING_ARCH, MAX_OUTSIDE_STEPS, Control, max_segments, uvarint
from .encoder_sparse import encode_sparse, merge_contiguous, reads_inside
from .encoder_streams import bsdiff_matches, exact_diff, lzma_compress, pack_streams
from .movemap import MoveMap, OutsideMap
from .relocate import make_relocator

_MIN_SEGMENTS = (12, 24, 32, 64, 128, 256)  # move-map thresholds the parameter search tries
_SEARCH_MIDDLE_SEGMENT = 32  # the threshold at which the pointer mode is chosen
_SEARCH_SPAN = 1 << 19  # the parameter search looks at the first 512 KiB of output
_TWO_PASS_LIMIT = 1 << 20  # images up to this size get a second match search
_MAX_OUTSIDE_MOVE = 1 << 20  # moves of outside addresses larger than this are noise
_ABSOLUTE_LIMIT = 1 << 40  # words at or above this are not addresses
_NEAR = 0x1000  # unchanged words this close to a moved address bound its step
_MIN_SUPPORT = 2  # fields that must agree on a step of the outside map


def encode_relocated(encoding: str, old: bytes, new: bytes, first_controls: Sequence[Control], base: int | None,
                     tune: bool, sparse: bool = True) -> dict[str, bytes]:
    """Search matches against the old image relocated with the current move map, re-derive the
    map from the new matches, repeat (twice for images up to 1 MiB, once above). Returns the
    ``encoding`` (control, diff and extra streams) and, when ``sparse``, its ``*-sparse``
    counterpart (the same diff as sparse ops) by name."""
    arch = ENCODING_ARCH[encoding]
    passes = 2 if len(new) <= _TWO_PASS_LIMIT else 1
    controls = first_controls
    _, min_segment, ptrmode = _search_parameters(arch, old, new, controls, base)
    for _ in range(passes):
        move_map = MoveMap.from_controls(controls, min_segment)
        guide = _statically_relocated(arch, old, base, move_map, ptrmode)
        controls, _, _ = bsdiff_matches(guide, new)
    controls = merge_contiguous(controls)  # the sparse decoder sees contiguous matches as one
    _, min_segment, ptrmode = _search_parameters(arch, old, new, controls, base)
    while sum(1 for copy_len, _, _ in controls if copy_len >= min_segment) > max_segments(len(new)):
        min_segment *= 2  # keep within what appliers accept
    move_map = MoveMap.from_controls(controls, min_segment)
    outside = _learn_outside(arch, old, new, controls, move_map, min_segment, base, ptrmode)
    best = None
    for outside_map in ([None, outside] if outside is not None else [None]):
        relocator = make_relocator(arch, old, base, move_map, ptrmode, outside_map)
        diff, extra = exact_diff(old, new, controls, relocator)
        fields = [min_segment, ptrmode, base or 0] + (outside_map.to_fields() if outside_map is not None else [0])
        quick_size = len(lzma_compress(diff, tune=False, preset=6)[1]) + sum(map(len, map(uvarint, fields)))
        if best is None or quick_size < best[0]:
            best = (quick_size, diff, extra, fields)
    _, diff, extra, fields = best
    out = {encoding: pack_streams(encoding, old, new, controls, diff, extra, fields, tune)}
    if sparse and reads_inside(controls, len(old)):
        sparse_encoding = f"{arch}-sparse"
        out[sparse_encoding] = encode_sparse(old, new, controls, diff, tune, sparse_encoding, fields)
    return out


def _search_parameters(arch: str, old: bytes, new: bytes, controls: Sequence[Control],
                       base: int | None) -> tuple[int, int, int]:
    """(size, min_segment, ptrmode) of the smallest quick encoding over the parameter grid.

    The move map is still built from all controls; only the diff of the first
    _SEARCH_SPAN output bytes is measured (fast LZMA preset) to rank the settings."""
    ptrmodes = (0, 1, 2) if base is not None else (0,)
    prefix = []
    covered = 0
    for control in controls:
        if covered >= _SEARCH_SPAN:
            break
        prefix.append(control)
        covered += control[0] + control[1]
    tried: dict[tuple[int, int], int] = {}

    def size(min_segment: int, ptrmode: int) -> int:
        if (min_segment, ptrmode) not in tried:
            move_map = MoveMap.from_controls(controls, min_segment)
            relocator = make_relocator(arch, old, base, move_map, ptrmode)
            diff, _ = exact_diff(old, new, prefix, relocator)
            tried[min_segment, ptrmode] = len(lzma_compress(diff, tune=False, preset=2)[1])
        return tried[min_segment, ptrmode]

    # coordinate search: pointer mode at a middle min_segment, then min_segment for that mode
    ptrmode = min(ptrmodes, key=lambda mode: (size(_SEARCH_MIDDLE_SEGMENT, mode), -mode))
    min_segment = min(_MIN_SEGMENTS, key=lambda threshold: (size(threshold, ptrmode), threshold))
    return size(min_segment, ptrmode), min_segment, ptrmode


def _statically_relocated(arch: str, old: bytes, base: int | None, move_map: MoveMap, ptrmode: int) -> bytes:
    """Whole old image relocated with the move map alone (to guide the match search)."""
    relocator = make_relocator(arch, old, base, move_map, ptrmode)
    out = bytearray()
    bounds = [start for start in move_map.starts if 0 < start < len(old)]
    edges = [0, *bounds, len(old)]
    for start, end in zip(edges, edges[1:]):
        if end > start:
            out += relocator.region(start, end, move_map.shift(start))
    return bytes(out)


def _learn_outside(arch: str, old: bytes, new: bytes, controls: Sequence[Control], move_map: MoveMap,
                   min_segment: int, base: int | None, ptrmode: int) -> OutsideMap | None:
    """Learn how addresses outside the old image moved (RAM variables, data behind the
    image): compare each address field of a long match with the same field in the new image,
    keep the shifts that several fields agree on, as steps over the target address."""
    old_relocator = make_relocator(arch, old, base, move_map, 0)  # instruction fields only
    new_relocator = make_relocator(arch, new, base, MoveMap([]), 0)
    n = len(old)
    low = 0x10000 - (base or 0)  # targets below this (absolute) are not taken for addresses
    # outside target -> Counter of the moves seen for it
    records: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    same: list[tuple[int, int, int]] = []  # aligned words equal in old and new: (start, end, shift)
    step, word_format = old_relocator.pointer_size, old_relocator.pointer_format
    old_pos = new_pos = 0
    for copy_len, extra_len, seek in controls:
        if copy_len >= min_segment:
            shift = new_pos - old_pos
            new_fields = {pos: (kind, target)
                          for pos, kind, target in new_relocator.fields(new_pos, new_pos + copy_len)}
            for pos, kind, target in old_relocator.fields(old_pos, old_pos + copy_len):
                old_target = old_relocator.target(pos, kind, target)
                if 0 <= old_target <= n or old_target < low:
                    continue
                new_field = new_fields.get(pos + shift)
                if new_field is None or new_field[0] != kind:
                    continue
                move = new_relocator.target(pos + shift, kind, new_field[1]) - old_target
                if -_MAX_OUTSIDE_MOVE < move < _MAX_OUTSIDE_MOVE:
                    records[old_target][move] += 1
            if base is not None:
                first = (old_pos + step - 1) & -step
                stop = (old_pos + copy_len) & -step
                if stop > first:
                    same.append((first, stop, shift))
                    old_words = struct.iter_unpack(word_format, old[first:stop])
                    new_words = struct.iter_unpack(word_format, new[first + shift:stop + shift])
                    pos = first
                    for (old_word,), (new_word,) in zip(old_words, new_words):
                        if old_word != new_word and old_word < _ABSOLUTE_LIMIT:
                            old_target = old_word - base
                            move = new_word - old_word
                            if (not 0 <= old_target <= n and old_target >= low
                                    and -_MAX_OUTSIDE_MOVE < move < _MAX_OUTSIDE_MOVE
                                    and not old_relocator.inside_call(pos)):
                                records[old_target][move] += 1
                        pos += step
        new_pos += copy_len + extra_len
        old_pos += copy_len + seek
    moved = sorted(records)
    if not moved:
        return None
    # Unchanged words near the moved ones bound the steps (shift 0).
    zeros: collections.Counter = collections.Counter()
    for first, stop, shift in same:
        old_words = struct.iter_unpack(word_format, old[first:stop])
        new_words = struct.iter_unpack(word_format, new[first + shift:stop + shift])
        for (old_word,), (new_word,) in zip(old_words, new_words):
            if old_word == new_word:
                target = old_word - base
                if not 0 <= target <= n and target >= low:
                    i = bisect.bisect_left(moved, target - _NEAR)
                    if i < len(moved) and moved[i] <= target + _NEAR:
                        zeros[target] += 1
    return _steps(moved, records, zeros)


def _steps(moved: list[int], records: dict[int, collections.Counter],
           zeros: collections.Counter) -> OutsideMap | None:
    """The outside map: runs of targets with the same majority move, those with too little
    support dropped, leading and trailing unmoved runs cut off."""
    runs: list[list[int]] = []  # [first target, last target, move, support]
    for target in sorted(set(moved).union(zeros)):
        counts = records.get(target)
        move, support = counts.most_common(1)[0] if counts else (0, 0)
        if zeros.get(target, 0) > support:
            move, support = 0, zeros[target]
        if runs and runs[-1][2] == move:
            runs[-1][1] = target
            runs[-1][3] += support
        else:
            runs.append([target, target, move, support])
    merged: list[list[int]] = []
    for run in runs:
        if run[3] < _MIN_SUPPORT:
            continue  # one field alone is noise more often than not
        if merged and merged[-1][2] == run[2]:
            merged[-1][1] = run[1]
            merged[-1][3] += run[3]
        else:
            merged.append(run)
    while merged and merged[0][2] == 0:
        merged.pop(0)
    if not merged:
        return None
    end = merged[-1][1] + 1
    if merged[-1][2] == 0:
        end = merged.pop()[0]
    if not merged or len(merged) > MAX_OUTSIDE_STEPS:
        return None
    return OutsideMap([run[0] for run in merged], [run[2] for run in merged], end)
