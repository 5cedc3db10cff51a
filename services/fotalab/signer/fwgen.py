"""Deterministic generator of realistic firmware images and their successive versions.

An image is rendered from a small *model* of a firmware, the way a linker lays one out:

* a vector table (initial stack pointer, reset and interrupt handlers as absolute addresses),
* ``.text``: functions of Thumb-2-like (``arch="thumb"``) or AArch64-like (``arch="aarch64"``)
  instructions with PC-relative calls (``BL``) to other functions; Thumb functions end with a
  literal pool of absolute addresses (functions with the Thumb bit, strings, RAM variables,
  constants), AArch64 functions reach strings and variables through ``ADRP`` + ``ADD`` pairs,
* ``.rodata``: NUL-terminated message strings, and pointer tables (command tables of
  ``{name, handler}`` entries, arrays of function pointers),
* ``.data``: initial values of variables,
* erased-flash padding (``0xFF``) up to the requested size.

Version k+1 is an edit of version k, like a release: a few functions inserted, removed or
rewritten (changed instructions, constants, call sites), strings changed or added, a RAM
variable added, the version string bumped. Everything behind an edit moves, so relative
calls that cross it and absolute addresses that point past it change, which is what makes
plain binary diffs of firmware large and what address-normalising filters undo.

Every version is **exactly** ``size`` bytes (the tail is ``0xFF`` padding, like a full flash
slot image); content fills about 88% of it, leaving room for growth across many versions.
Output depends only on ``(seed, size, count, arch)`` (``random.Random`` seeded with a string
is stable across runs and platforms).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

__all__ = ["firmware_versions", "ARCHS", "MIN_SIZE", "MAX_SIZE"]

ARCHS = ("thumb", "aarch64")
MIN_SIZE = 16 * 1024
MAX_SIZE = 64 * 1024 * 1024

_FILL = 0.88  # share of the image given to content in version 0

# Opcode bytes: the most significant byte of each Thumb halfword / AArch64 word, weighted
# roughly like compiled code. Bytes that would form BL/B.W (Thumb 0xF0-0xF7) or B/BL/ADRP
# (AArch64) are left out so that only the generated calls carry those encodings.
_THUMB_OPS = {
    0x46: 9, 0x68: 8, 0x60: 6, 0x4B: 5, 0x49: 4, 0x48: 4, 0x2B: 5, 0xD1: 5, 0xD0: 5, 0x23: 6,
    0x22: 4, 0x21: 4, 0x20: 5, 0x1C: 3, 0x30: 2, 0x33: 3, 0x3B: 2, 0x42: 3, 0x43: 2, 0x40: 2,
    0xE7: 3, 0xE0: 3, 0xDB: 2, 0xDC: 1, 0xD8: 1, 0x78: 4, 0x70: 3, 0x88: 2, 0x80: 2, 0x9B: 3,
    0x93: 2, 0x98: 2, 0x90: 1, 0xBF: 3, 0xF8: 3, 0xE9: 1, 0x18: 2, 0x1A: 1, 0x00: 2, 0x01: 1,
    0x6B: 2, 0x62: 1, 0x69: 2, 0x61: 1, 0x4A: 3, 0x47: 1, 0x2C: 1, 0x2A: 2, 0xB2: 1, 0x04: 1,
}
_A64_OPS = {
    0xF9: 10, 0xAA: 8, 0x91: 6, 0xD1: 3, 0x52: 7, 0xB9: 6, 0x39: 5, 0x54: 6, 0x35: 3, 0x34: 4,
    0xEB: 4, 0x2A: 3, 0x0B: 2, 0x8B: 3, 0x71: 3, 0xF1: 3, 0x12: 2, 0x53: 2, 0xD3: 2, 0x1B: 1,
    0x9B: 1, 0x72: 1, 0x11: 3, 0x51: 2, 0x6B: 2, 0x7A: 1, 0x1A: 2, 0x9A: 2, 0x36: 1, 0x37: 1,
    0xB4: 2, 0xB5: 2, 0x79: 2, 0x38: 2, 0x78: 1, 0xA9: 2, 0xA8: 1, 0x2F: 1, 0x4E: 1, 0x3D: 1,
}


def _table(weights: dict[int, int]) -> bytes:
    """A 256-entry translate table mapping uniform bytes onto the weighted opcode bytes."""
    total = sum(weights.values())
    out = bytearray()
    acc = 0.0
    items = sorted(weights.items())
    for op, w in items:
        acc += w * 256 / total
        while len(out) < min(256, round(acc)):
            out.append(op)
    while len(out) < 256:
        out.append(items[-1][0])
    return bytes(out)


def _low_table() -> bytes:
    """Operand bytes: small register numbers and immediates are much more common."""
    out = bytearray()
    for i in range(256):
        # Squash towards small values: i*i/256 keeps half of the mass below 64.
        out.append((i * i) >> 8 if i & 1 else i & 0x3F)
    return bytes(out)


_THUMB_TABLE = _table(_THUMB_OPS)
_A64_TABLE = _table(_A64_OPS)
_LOW_TABLE = _low_table()

_SYLLABLES = ("ka", "lo", "mi", "net", "sen", "dev", "cfg", "irq", "dma", "buf", "err", "ok",
              "tx", "rx", "spi", "i2c", "uart", "gpio", "adc", "pwm", "tim", "clk", "pll", "usb",
              "fs", "blk", "mq", "tt", "ota", "img", "sig", "key", "boot", "slot", "log", "crc")
_FORMATS = ("%s: %s failed (%d)\n", "%s %s ready\n", "[%s] %s = 0x%08x\n", "%s: bad %s\n",
            "%s %s timeout after %u ms\n", "usage: %s %s <n>\n", "%s: %s\n")


@dataclass
class _Func:
    fid: int
    body: bytes  # instructions without calls, prologue or epilogue
    calls: list[tuple[int, int]]  # (insertion offset in body, callee fid), sorted
    refs: list[tuple[str, int]]  # ("f"|"s"|"v"|"c", id or value): literal pool / ADRP pairs


@dataclass
class _Model:
    arch: str
    base: int
    ram: int
    funcs: list[_Func]
    strings: dict[int, bytes]
    string_order: list[int]
    tables: list[list[tuple[str, int]]]  # pointer tables: ("f", fid) / ("s", sid)
    ram_vars: list[tuple[int, int]]  # (vid, size), in RAM order
    data: bytes  # .data initial values
    version: int = 1
    next_id: int = 0
    popular: list[int] = field(default_factory=list)  # often-called helpers


class _Gen:
    def __init__(self, rng: random.Random, arch: str) -> None:
        self.rng = rng
        self.arch = arch
        self.unit = 2 if arch == "thumb" else 4
        self.table = _THUMB_TABLE if arch == "thumb" else _A64_TABLE

    def code(self, nbytes: int) -> bytes:
        """Instruction-like bytes (whole halfwords/words, no call encodings)."""
        u = self.unit
        n = max(u, nbytes - nbytes % u)
        raw = self.rng.randbytes(n)
        buf = bytearray(raw.translate(_LOW_TABLE))
        buf[u - 1::u] = raw[u - 1::u].translate(self.table)
        return bytes(buf)

    def string(self) -> bytes:
        r = self.rng
        words = ["_".join(r.choice(_SYLLABLES) for _ in range(r.randint(1, 3)))
                 for _ in range(2)]
        fmt = r.choice(_FORMATS)
        try:
            text = fmt % tuple(words + [r.randint(0, 9999)][: fmt.count("%")])
        except TypeError:
            text = " ".join(words) + "\n"
        return text.encode()

    def func_size(self) -> int:
        # Log-uniform between 24 bytes and 3 KiB: many small functions, a few large.
        return int(2 ** self.rng.uniform(4.6, 11.6))

    def new_func(self, fid: int, model: _Model, nfuncs_hint: int) -> _Func:
        r = self.rng
        size = self.func_size()
        body = self.code(size)
        ncalls = max(0, int(size / r.uniform(24, 64)))
        calls = []
        for _ in range(ncalls):
            off = r.randrange(0, len(body) + 1, self.unit)
            calls.append((off, self.callee(model, fid, nfuncs_hint)))
        calls.sort()
        nrefs = r.randint(0, max(1, size // (96 if self.arch == "thumb" else 160)))
        refs = [self.ref(model) for _ in range(nrefs)]
        return _Func(fid, body, calls, refs)

    def callee(self, model: _Model, fid: int, nfuncs_hint: int) -> int:
        r = self.rng
        if model.popular and r.random() < 0.35:
            return r.choice(model.popular)
        # Calls are local more often than not: pick a neighbour by id distance.
        span = max(2, min(nfuncs_hint, 64))
        return max(0, min(nfuncs_hint - 1, fid + r.randint(-span, span)))

    def ref(self, model: _Model) -> tuple[str, int]:
        r = self.rng
        x = r.random()
        if x < 0.3 and model.strings:
            return ("s", r.choice(model.string_order))
        if x < 0.55 and model.ram_vars:
            return ("v", r.choice(model.ram_vars)[0])
        if x < 0.8:
            return ("f", -1)  # resolved to a random existing function at render time
        return ("c", r.getrandbits(32) if r.random() < 0.5 else r.randrange(0, 4096))


def _thumb_bl(src: int, dst: int) -> bytes:
    off = (dst - (src + 4)) & ((1 << 25) - 1)
    s = off >> 24
    i1 = (off >> 23) & 1
    i2 = (off >> 22) & 1
    j1 = 1 ^ i1 ^ s
    j2 = 1 ^ i2 ^ s
    hw1 = 0xF000 | (s << 10) | ((off >> 12) & 0x3FF)
    hw2 = 0xD000 | (j1 << 13) | (j2 << 11) | ((off >> 1) & 0x7FF)
    return struct.pack("<HH", hw1, hw2)


def _a64_bl(src: int, dst: int) -> bytes:
    return struct.pack("<I", 0x94000000 | (((dst - src) >> 2) & 0x3FFFFFF))


def _a64_adrp_add(pc: int, target: int, reg: int) -> bytes:
    pages = ((target >> 12) - (pc >> 12)) & ((1 << 21) - 1)
    adrp = 0x90000000 | ((pages & 3) << 29) | ((pages >> 2) << 5) | reg
    add = 0x91000000 | ((target & 0xFFF) << 10) | (reg << 5) | reg
    return struct.pack("<II", adrp, add)


_THUMB_PROLOGUE = struct.pack("<H", 0xB5F0)  # push {r4-r7, lr}
_THUMB_EPILOGUE = struct.pack("<H", 0xBDF0)  # pop {r4-r7, pc}
_A64_PROLOGUE = struct.pack("<II", 0xA9BF7BFD, 0x910003FD)  # stp x29,x30,[sp,#-16]!; mov x29,sp
_A64_EPILOGUE = struct.pack("<II", 0xA8C17BFD, 0xD65F03C0)  # ldp x29,x30,[sp],#16; ret


def _func_len(arch: str, f: _Func) -> int:
    if arch == "thumb":
        code = 2 + len(f.body) + 4 * len(f.calls) + 2
        return ((code + 3) & ~3) + 4 * len(f.refs)
    return 8 + len(f.body) + 4 * len(f.calls) + 8 * len(f.refs) + 8


def _render(m: _Model, size: int, rng_seed: str) -> bytes:
    """Lay the model out and resolve every call and address."""
    arch = m.arch
    thumb = arch == "thumb"
    nvec = 64 if thumb else 0
    pos = nvec * 4 if thumb else 0x800  # AArch64: exception vectors area first
    faddr: dict[int, int] = {}
    for f in m.funcs:
        faddr[f.fid] = pos
        pos += _func_len(arch, f)
    text_end = pos
    saddr: dict[int, int] = {}
    for sid in m.string_order:
        saddr[sid] = pos
        pos = (pos + len(m.strings[sid]) + 1 + 3) & ~3
    ptr = 4 if thumb else 8
    tables_at = []
    pos = (pos + ptr - 1) & ~(ptr - 1)
    for t in m.tables:
        tables_at.append(pos)
        pos += ptr * len(t)
    data_at = pos
    pos += len(m.data)
    if pos > size:
        raise ValueError(f"firmware model needs {pos} bytes, more than size={size}")
    vaddr: dict[int, int] = {}
    vpos = m.ram
    for vid, vsize in m.ram_vars:
        vaddr[vid] = vpos
        vpos += (vsize + 3) & ~3
    # Stable, deterministic choice for ("f", -1) references: hash of function and slot.
    fids = [f.fid for f in m.funcs]
    live = set(fids)
    pick = random.Random(rng_seed)
    pick_cache: dict[tuple[int, int], int] = {}

    def fn_ptr(owner: int, slot: int) -> int:
        key = (owner, slot)
        fid = pick_cache.get(key)
        if fid is None or fid not in live:
            fid = fids[pick.randrange(len(fids))]
            pick_cache[key] = fid
        return m.base + faddr[fid] + (1 if thumb else 0)

    def ref_value(owner: int, slot: int, kind: str, x: int) -> int:
        if kind == "s":
            return m.base + saddr[x] if x in saddr else m.base + text_end
        if kind == "v":
            return vaddr.get(x, m.ram)
        if kind == "f":
            if x >= 0 and x in faddr:
                return m.base + faddr[x] + (1 if thumb else 0)
            return fn_ptr(owner, slot)
        return x

    out = bytearray(b"\xff") * size
    parts = []
    if thumb:
        vec = [m.ram + 0x20000]
        handlers = [f.fid for f in m.funcs[:12]] or [0]
        for i in range(1, nvec):
            fid = handlers[i % len(handlers)] if i < 16 else handlers[-1]
            vec.append(m.base + faddr[fid] + 1)
        out[0:nvec * 4] = struct.pack(f"<{nvec}I", *vec)
    else:
        # Exception vectors: 16 slots of 0x80 bytes, each a branch to a handler.
        for i in range(16):
            fid = m.funcs[i % max(1, min(4, len(m.funcs)))].fid
            out[i * 0x80:i * 0x80 + 4] = _a64_bl(i * 0x80, faddr[fid])[:3] + b"\x14"
    for f in m.funcs:
        a = faddr[f.fid]
        chunks = [_THUMB_PROLOGUE if thumb else _A64_PROLOGUE]
        here = a + len(chunks[0])
        prev = 0
        for off, callee in f.calls:
            seg = f.body[prev:off]
            chunks.append(seg)
            here += len(seg)
            dst = faddr.get(callee)
            if dst is None:  # callee removed: the caller was relinked to a neighbour
                dst = faddr[fids[callee % len(fids)]]
            chunks.append(_thumb_bl(here, dst) if thumb else _a64_bl(here, dst))
            here += 4
            prev = off
        seg = f.body[prev:]
        chunks.append(seg)
        here += len(seg)
        if thumb:
            chunks.append(_THUMB_EPILOGUE)
            here += 2
            if here & 3:
                chunks.append(b"\x00\xbf")  # nop
                here += 2
            vals = [ref_value(f.fid, i, k, x) & 0xFFFFFFFF for i, (k, x) in enumerate(f.refs)]
            chunks.append(struct.pack(f"<{len(vals)}I", *vals))
        else:
            for i, (k, x) in enumerate(f.refs):
                target = ref_value(f.fid, i, k, x)
                if k == "c":
                    chunks.append(struct.pack("<II", 0xD2800000 | ((x & 0xFFFF) << 5) | (i % 8),
                                              0xF2A00000 | (((x >> 16) & 0xFFFF) << 5) | (i % 8)))
                else:
                    chunks.append(_a64_adrp_add(m.base + here, target, i % 8))
                here += 8
            chunks.append(_A64_EPILOGUE)
        parts.append(b"".join(chunks))
    body = b"".join(parts)
    out[nvec * 4 if thumb else 0x800:text_end] = body
    for sid in m.string_order:
        s = m.strings[sid]
        out[saddr[sid]:saddr[sid] + len(s) + 1] = s + b"\0"
        pad_to = (saddr[sid] + len(s) + 1 + 3) & ~3
        out[saddr[sid] + len(s) + 1:pad_to] = bytes(pad_to - saddr[sid] - len(s) - 1)
    for ti, (t, at) in enumerate(zip(m.tables, tables_at)):
        vals = [ref_value(-1 - ti, i, k, x) for i, (k, x) in enumerate(t)]
        out[at:at + ptr * len(vals)] = struct.pack(f"<{len(vals)}{'I' if thumb else 'Q'}", *vals)
    out[data_at:data_at + len(m.data)] = m.data
    return bytes(out)


def _initial(rng: random.Random, g: _Gen, arch: str, size: int) -> _Model:
    thumb = arch == "thumb"
    base = 0x08000000 if thumb else 0x80000
    ram = 0x20000000 if thumb else 0x40000000
    m = _Model(arch, base, ram, [], {}, [], [], [], b"")
    budget = int((size - (64 * 4 if thumb else 0x800)) * _FILL)
    # strings (~12%), tables (~4%), data (~3%), text the rest
    str_budget = budget * 12 // 100
    used = 0
    while used < str_budget:
        s = g.string()
        m.strings[m.next_id] = s
        m.string_order.append(m.next_id)
        m.next_id += 1
        used += (len(s) + 4) & ~3
    m.ram_vars = [(m.next_id + i, rng.choice((1, 2, 4, 4, 4, 8, 16, 32, 64, 256)))
                  for i in range(max(8, size // 512))]
    m.next_id += len(m.ram_vars)
    m.data = g.code(budget * 3 // 100)
    text_budget = budget - used - len(m.data) - budget * 4 // 100
    est = max(8, text_budget // 700)
    pos = 0
    fid = m.next_id
    while pos < text_budget:
        f = g.new_func(fid, m, fid + est)
        m.funcs.append(f)
        pos += _func_len(arch, f)
        fid += 1
    m.next_id = fid
    if pos > text_budget and len(m.funcs) > 1:
        m.funcs.pop()
    ids = [f.fid for f in m.funcs]
    m.popular = rng.sample(ids, min(len(ids), max(2, len(ids) // 50)))
    _fix_calls(m)
    ptr = 4 if thumb else 8
    tab_budget = budget * 4 // 100
    while tab_budget > 0:
        n = rng.randint(4, 64)
        cmd = rng.random() < 0.5
        t = []
        for _ in range(n):
            if cmd and m.string_order:
                t.append(("s", rng.choice(m.string_order)))
            t.append(("f", rng.choice(ids)))
        m.tables.append(t)
        tab_budget -= ptr * len(t)
    m.strings[m.next_id] = b"fota-lab firmware v1.0.0 (" + arch.encode() + b")"
    m.string_order.insert(0, m.next_id)
    m.next_id += 1
    while _content_size(m) > size * 0.95 and len(m.funcs) > 2:
        m.funcs.pop()
    _fix_calls(m)
    return m


def _fix_calls(m: _Model) -> None:
    ids = [f.fid for f in m.funcs]
    live = set(ids)
    for f in m.funcs:
        if any(c not in live for _, c in f.calls):
            f.calls = [(o, c if c in live else ids[c % len(ids)]) for o, c in f.calls]


def _content_size(m: _Model) -> int:
    thumb = m.arch == "thumb"
    pos = 64 * 4 if thumb else 0x800
    pos += sum(_func_len(m.arch, f) for f in m.funcs)
    pos += sum((len(s) + 4) & ~3 for s in m.strings.values())
    pos = (pos + 7) & ~7
    pos += sum((4 if thumb else 8) * len(t) for t in m.tables)
    return pos + len(m.data)


def _edit(m: _Model, g: _Gen, rng: random.Random, size: int) -> None:
    """One release worth of changes."""
    scale = 1 + size // (1 << 20)
    ids = [f.fid for f in m.funcs]
    # 1. rewrite a few functions: changed instructions and constants, sometimes grown/shrunk
    for _ in range(rng.randint(2, 4) * scale):
        f = rng.choice(m.funcs)
        body = bytearray(f.body)
        for _ in range(rng.randint(1, 4)):
            if not body:
                break
            at = rng.randrange(0, len(body), g.unit)
            n = min(len(body) - at, g.unit * rng.randint(1, 6))
            body[at:at + n] = g.code(n)
        delta = 0
        if rng.random() < 0.5:
            at = rng.randrange(0, len(body) + 1, g.unit)
            grow = g.code(g.unit * rng.randint(1, 24))
            body[at:at] = grow
            delta = len(grow)
            f.calls = [(o + delta if o >= at else o, c) for o, c in f.calls]
            if rng.random() < 0.5:
                f.calls.append((at, g.callee(m, f.fid, len(ids) + ids[0])))
                f.calls.sort()
        f.body = bytes(body)
        if f.refs and rng.random() < 0.5:
            i = rng.randrange(len(f.refs))
            k, x = f.refs[i]
            f.refs[i] = ("c", rng.getrandbits(16)) if k == "c" else g.ref(m)
    # 2. remove a function (callers get relinked)
    if len(m.funcs) > 16 and rng.random() < 0.6:
        for _ in range(rng.randint(1, scale)):
            m.funcs.pop(rng.randrange(8, len(m.funcs)))
        _fix_calls(m)
    # 3. insert new functions, called from a few existing ones
    for _ in range(rng.randint(1, 3) * scale):
        if _content_size(m) > size * 0.97:
            break
        fid = m.next_id
        m.next_id += 1
        f = g.new_func(fid, m, 1)
        f.calls = [(o, rng.choice(m.funcs).fid) for o, _ in f.calls]
        at = rng.randrange(1, len(m.funcs) + 1)
        m.funcs.insert(at, f)
        for _ in range(rng.randint(1, 3)):
            caller = rng.choice(m.funcs)
            off = rng.randrange(0, len(caller.body) + 1, g.unit)
            caller.calls.append((off, fid))
            caller.calls.sort()
    # 4. strings: change a few, add one, bump the version string
    for _ in range(rng.randint(1, 3) * scale):
        sid = rng.choice(m.string_order)
        m.strings[sid] = g.string()
    sid = m.next_id
    m.next_id += 1
    m.strings[sid] = g.string()
    m.string_order.insert(rng.randrange(len(m.string_order) + 1), sid)
    m.version += 1
    vsid = m.string_order[0] if m.strings[m.string_order[0]].startswith(b"fota-lab") else None
    if vsid is not None:
        m.strings[vsid] = b"fota-lab firmware v1.%d.0 (%s)" % (m.version - 1, m.arch.encode())
    # 5. a new RAM variable somewhere: every variable behind it moves
    if rng.random() < 0.7:
        vid = m.next_id
        m.next_id += 1
        m.ram_vars.insert(rng.randrange(len(m.ram_vars) + 1), (vid, rng.choice((4, 8, 16, 64))))
    # 6. a few initial values in .data
    data = bytearray(m.data)
    for _ in range(rng.randint(0, 3)):
        if data:
            at = rng.randrange(0, len(data) - 3, 4) if len(data) > 4 else 0
            data[at:at + 4] = rng.randbytes(4)
    m.data = bytes(data)
    # keep within the slot
    while _content_size(m) > size and len(m.funcs) > 2:
        m.funcs.pop(rng.randrange(1, len(m.funcs)))
        _fix_calls(m)


def firmware_versions(seed: int, size: int, count: int, arch: str = "thumb") -> list[bytes]:
    """``count`` successive versions of one firmware, each exactly ``size`` bytes.

    Version k+1 is a realistic edit of version k (see the module docstring). Deterministic for
    ``(seed, size, count, arch)``; a longer ``count`` extends a shorter one (same prefix).
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, not {arch!r}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be within {MIN_SIZE}..{MAX_SIZE} bytes, not {size}")
    if count < 0:
        raise ValueError("count must not be negative")
    key = f"fotalab-fwgen:{seed}:{size}:{arch}"
    rng = random.Random(key)
    g = _Gen(rng, arch)
    m = _initial(rng, g, arch, size)
    out = []
    for k in range(count):
        if k:
            _edit(m, g, rng, size)
        out.append(_render(m, size, key + ":refs"))
    return out
