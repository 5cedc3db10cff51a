"""The signer's guesses about an old image: is it code of an instruction set (worth a
relocating encoding), and at which address is it loaded (needed to relocate absolute
pointers)? Both look at the first ``_SAMPLE`` bytes only, and both are plain heuristics: a
wrong guess costs delta size, never correctness.
"""

from __future__ import annotations

import collections
import struct

from .movemap import MoveMap
from .relocate import RELOCATORS, make_relocator

_SAMPLE = 2 << 20  # architecture and load-address guesses look at the first 2 MiB only
MIN_ARCH_SCORE = 0.2  # below this an image is not treated as code of that architecture
_MIN_CALLS = 8  # fewer calls than this: not code of that architecture at all
_MIN_VOTES = 8  # a load address needs this many votes ...
_WIN_FACTOR = 3  # ... and this many times the runner-up's
_POINTER_RANGE = (0x100, 1 << 40)  # values outside are not taken for pointers
_PAGE_MASK = 0xFFF  # 4 KiB-aligned bases keep a pointer's low 12 bits
_CLUSTER_SHIFT = 20  # pointer values are clustered by MiB
_ANCHOR_CALLS = 32  # the most-called functions that anchor a guess at an unaligned base
_GUESSES = 4  # unaligned bases scored in full


def arch_score(arch: str, old: bytes) -> float:
    """How much ``old`` looks like code of ``arch``: the share of its call instructions whose
    target is also the target of another call (real code calls the same functions from many
    places; random bytes almost never do). Around 0.5 and above for real code, < 0.05 for
    data or another instruction set."""
    old = old[:_SAMPLE]
    n = len(old)
    relocator = make_relocator(arch, old, None, MoveMap([]), 0)
    targets = collections.Counter(relocator.scored_call_targets())
    total = sum(targets.values())
    if total < _MIN_CALLS:
        return 0.0
    return sum(count for target, count in targets.items() if count > 1 and 0 <= target < n) / total


def _decide(votes: collections.Counter) -> int | None:
    """The winner of ``votes`` if it won clearly, else None."""
    ranked = votes.most_common(2) + [(None, 0), (None, 0)]
    (winner, winner_votes), (_, runner_up_votes) = ranked[0], ranked[1]
    return winner if winner_votes >= _MIN_VOTES and winner_votes >= _WIN_FACTOR * runner_up_votes else None


def guess_base(arch: str, old: bytes) -> int | None:
    """Load address of the image (minus any header in front of it), or None when no base
    stands out.

    A base scores one per distinct absolute code pointer that lands on a call target or a
    function prologue once the base is subtracted. Candidates: first 4 KiB-aligned bases
    (votes matched on the low 12 bits); failing that, any base (an image wrapped in a header),
    from the differences between the densest cluster of pointer values and the most-called
    functions.
    """
    old = old[:_SAMPLE]
    n = len(old)
    relocator = make_relocator(arch, old, None, MoveMap([]))
    calls = collections.Counter(relocator.call_targets())
    align = RELOCATORS[arch].code_alignment
    prologues = [match.start() for match in RELOCATORS[arch].prologue.finditer(old) if not match.start() & (align - 1)]
    code_targets = {target for target in calls if 0 <= target < n}
    code_targets.update(prologues)
    if not code_targets:
        return None
    step = relocator.pointer_size
    pointers = set()
    for (value,) in struct.iter_unpack(relocator.pointer_format, old[:n - n % step]):
        address = relocator.code_pointer(value)
        if address is not None and _POINTER_RANGE[0] <= address < _POINTER_RANGE[1]:
            pointers.add(address)

    by_page_offset: dict[int, list[int]] = collections.defaultdict(list)
    for target in code_targets:
        by_page_offset[target & _PAGE_MASK].append(target)
    votes: collections.Counter = collections.Counter()
    for pointer in pointers:  # each distinct pointer-like value votes once
        for target in by_page_offset.get(pointer & _PAGE_MASK, ()):
            if pointer >= target:
                votes[pointer - target] += 1
    base = _decide(votes)
    if base is not None:
        return base
    clusters = collections.Counter(pointer >> _CLUSTER_SHIFT for pointer in pointers)
    dense = {cluster for cluster, _ in clusters.most_common(2)}
    anchors = [target for target, _ in calls.most_common(_ANCHOR_CALLS) if 0 <= target < n]
    guesses = collections.Counter(pointer - anchor for pointer in pointers if pointer >> _CLUSTER_SHIFT in dense
                                  for anchor in anchors if pointer >= anchor)
    scores: collections.Counter = collections.Counter()
    for guess, _ in guesses.most_common(_GUESSES):
        scores[guess] = sum(1 for pointer in pointers if pointer - guess in code_targets)
    return _decide(scores)
