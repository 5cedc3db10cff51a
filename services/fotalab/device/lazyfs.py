"""A flash that forgets what was not synced: a tiny FUSE filesystem in the LazyFS manner.

An SWUpdate device's flash is a Docker volume, and SWUpdate writes through the kernel, so after
`docker kill` the host's page cache would still hold every write it made, synced or not. This
filesystem sits between them: mounted over the device's flash directory, it passes metadata
through to the volume (the *backing* directory) at once but holds written data in its own
memory, page by page, as a page cache would, until it is synced. When the container dies, the
process and everything it held die with it: exactly what a power cut loses.

What is modelled (ext4 with data=ordered and auto_da_alloc, roughly):

* write: data and the file size it implies stay in this process until the file is flushed;
* flush of one file: fsync/fdatasync; the last close of a file truncated to zero since its last
  flush (ext4's replace-via-truncate heuristic); a rename over an existing file flushes the file
  renamed (replace-via-rename); truncation is held with the data, and flushed with it;
* fsync of a directory: everything held is flushed (a journal commit writes the data of all
  files first, in data=ordered mode), then the backing directory is fsynced;
* the kernel's writeback: data held longer than `expire_s` (default 30 s, Linux's
  dirty_expire_centisecs) is flushed in the background; 0 turns that off;
* unlink drops what a file held; create, mkdir, rename, unlink, rmdir, chmod, chown and utimes
  reach the volume at once.

Not modelled: lost or reordered metadata (a created, renamed or unlinked entry is durable at
once, as if the journal committed it on the spot; a real fs may lose it until its directory is
synced or the journal commits), torn pages and sector-level tearing, write reordering within the
data of one file (a flush writes all of it or, when cut, none), mmap'ed writes beyond what the
kernel sends as WRITE, hard and symbolic links (refused), xattrs, locks, O_DIRECT.

It speaks the kernel's FUSE protocol itself over /dev/fuse (no libfuse, no compiled code, no new
dependency: the same in the online and the offline image), single-threaded. Mounting needs
/dev/fuse and CAP_SYS_ADMIN (mount(2)); in the container: `devices: [/dev/fuse]`,
`cap_add: [SYS_ADMIN]`.

    python -m fotalab.device.lazyfs BACKING MOUNTPOINT [--expire SECONDS]
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import os
import select
import stat
import struct
import sys
import time
from dataclasses import dataclass, field

PAGE = 4096
MAX_WRITE = 128 * 1024
ROOT = 1
MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2
FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE, FATTR_ATIME, FATTR_MTIME = 1, 2, 4, 8, 16, 32
FATTR_ATIME_NOW, FATTR_MTIME_NOW = 128, 256
RENAME_NOREPLACE = 1
INIT_FLAGS = (1 << 3) | (1 << 5) | (1 << 22)     # ATOMIC_O_TRUNC, BIG_WRITES, MAX_PAGES
(LOOKUP, FORGET, GETATTR, SETATTR, MKNOD, MKDIR, UNLINK, RMDIR, RENAME, OPEN, READ, WRITE, STATFS, RELEASE,
 FSYNC, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR, FSYNCDIR, ACCESS, CREATE, INTERRUPT, DESTROY, BATCH_FORGET,
 RENAME2) = (1, 2, 3, 4, 8, 9, 10, 11, 12, 14, 15, 16, 17, 18, 20, 25, 26, 27, 28, 29, 30, 34, 35, 36, 38, 42, 45)
NO_REPLY = {FORGET, BATCH_FORGET, INTERRUPT}
IN_HEADER = struct.Struct("<IIQQIIIHH")
OUT_HEADER = struct.Struct("<IiQ")
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")


@dataclass
class Dirty:
    """What one file holds that its backing file does not have yet."""
    size: int                      # the file's size as the program sees it
    zero_from: int                 # backing bytes at or past this offset read as zeros (a truncation)
    since: float                   # when the oldest held write was made
    pages: dict[int, bytearray] = field(default_factory=dict)
    flush_on_close: bool = False   # truncated to zero since the last flush (ext4's auto_da_alloc)


class Overlay:
    """The held writes of every file, over a backing directory: no FUSE here, testable alone."""

    def __init__(self, backing: str) -> None:
        self.backing = backing
        self.dirty: dict[str, Dirty] = {}        # by path relative to the backing directory

    def real(self, path: str) -> str:
        return os.path.join(self.backing, path) if path else self.backing

    def _backing_read(self, path: str, offset: int, length: int, zero_from: int) -> bytes:
        if length <= 0 or offset >= zero_from:
            return b"\0" * max(length, 0)
        fd = os.open(self.real(path), os.O_RDONLY)
        try:
            data = os.pread(fd, min(length, zero_from - offset), offset)
        finally:
            os.close(fd)
        return data.ljust(length, b"\0")

    def size(self, path: str, backing_size: int) -> int:
        held = self.dirty.get(path)
        return held.size if held else backing_size

    def _held(self, path: str) -> Dirty:
        held = self.dirty.get(path)
        if held is None:
            size = os.stat(self.real(path)).st_size
            held = self.dirty[path] = Dirty(size, size, time.monotonic())
        return held

    def read(self, path: str, offset: int, length: int) -> bytes:
        held = self.dirty.get(path)
        if held is None:
            fd = os.open(self.real(path), os.O_RDONLY)
            try:
                return os.pread(fd, length, offset)
            finally:
                os.close(fd)
        end = min(offset + length, held.size)
        out = bytearray()
        position = offset
        while position < end:
            page, within = divmod(position, PAGE)
            take = min(PAGE - within, end - position)
            if page in held.pages:
                out += held.pages[page][within:within + take]
            else:
                out += self._backing_read(path, position, take, held.zero_from)
            position += take
        return bytes(out)

    def write(self, path: str, offset: int, data: bytes) -> None:
        held = self._held(path)
        position, end = offset, offset + len(data)
        while position < end:
            page, within = divmod(position, PAGE)
            take = min(PAGE - within, end - position)
            if page not in held.pages:
                base = self._backing_read(path, page * PAGE, PAGE, min(held.zero_from, held.size))
                held.pages[page] = bytearray(base)
            held.pages[page][within:within + take] = data[position - offset:position - offset + take]
            position += take
        held.size = max(held.size, end)

    def truncate(self, path: str, size: int) -> None:
        held = self._held(path)
        for page in [p for p in held.pages if p * PAGE >= size]:
            del held.pages[page]
        page, within = divmod(size, PAGE)
        if page in held.pages:
            held.pages[page][within:] = bytes(PAGE - within)
        held.zero_from = min(held.zero_from, size)
        held.size = size
        held.flush_on_close |= size == 0

    def flush(self, path: str) -> None:
        """Write what `path` holds to its backing file and fsync it (fsync of a real file)."""
        held = self.dirty.pop(path, None)
        fd = os.open(self.real(path), os.O_WRONLY)
        try:
            if held is not None:
                os.ftruncate(fd, min(held.zero_from, os.fstat(fd).st_size))
                for page, data in sorted(held.pages.items()):
                    start = page * PAGE
                    if start < held.size:
                        os.pwrite(fd, bytes(data[:held.size - start]), start)
                os.ftruncate(fd, held.size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def flush_all(self) -> None:
        for path in list(self.dirty):
            self.flush(path)

    def flush_older_than(self, age_s: float) -> None:
        limit = time.monotonic() - age_s
        for path in [p for p, held in self.dirty.items() if held.since <= limit]:
            self.flush(path)

    def forget(self, path: str) -> None:
        self.dirty.pop(path, None)

    def moved(self, old: str, new: str) -> None:
        """A rename: what the old path (or anything below it) held moves with it."""
        for path in list(self.dirty):
            if path == old or path.startswith(old + "/"):
                self.dirty[new + path[len(old):]] = self.dirty.pop(path)


class LazyFS:
    """The FUSE protocol over one /dev/fuse descriptor, on an Overlay."""

    def __init__(self, fuse_fd: int, backing: str, expire_s: float) -> None:
        self.fd = fuse_fd
        self.overlay = Overlay(backing)
        self.expire_s = expire_s
        self.paths: dict[int, str] = {ROOT: ""}
        self.nodes: dict[int, int] = {}          # backing inode -> node id
        self.next_node = ROOT + 1

    # -- helpers
    def node_for(self, path: str, st: os.stat_result) -> int:
        node = self.nodes.get(st.st_ino)
        if node is None or self.paths.get(node) != path:
            node = self.next_node
            self.next_node += 1
            self.nodes[st.st_ino] = node
        self.paths[node] = path
        return node

    def attr(self, node: int, path: str) -> bytes:
        st = os.lstat(self.overlay.real(path))
        size = self.overlay.size(path, st.st_size) if stat.S_ISREG(st.st_mode) else st.st_size
        return ATTR.pack(node, size, (size + 511) // 512, int(st.st_atime), int(st.st_mtime), int(st.st_ctime),
                         st.st_atime_ns % 10**9, st.st_mtime_ns % 10**9, st.st_ctime_ns % 10**9, st.st_mode,
                         st.st_nlink, st.st_uid, st.st_gid, st.st_rdev, PAGE, 0)

    def entry(self, path: str) -> bytes:
        st = os.lstat(self.overlay.real(path))
        node = self.node_for(path, st)
        return struct.pack("<QQQQII", node, 0, 0, 0, 0, 0) + self.attr(node, path)

    def child(self, node: int, name: bytes) -> str:
        parent = self.paths[node]
        name_s = name.split(b"\0", 1)[0].decode()
        return f"{parent}/{name_s}" if parent else name_s

    def reply(self, unique: int, error: int = 0, data: bytes = b"") -> None:
        try:
            os.write(self.fd, OUT_HEADER.pack(OUT_HEADER.size + len(data), -error, unique) + data)
        except OSError as exc:
            if exc.errno != errno.ENOENT:          # the request was interrupted: nobody waits for it
                raise

    # -- the loop
    def serve(self) -> None:
        while True:
            if self.expire_s > 0:
                self.overlay.flush_older_than(self.expire_s)
            ready, _, _ = select.select([self.fd], [], [], 1.0)
            if not ready:
                continue
            try:
                request = os.read(self.fd, MAX_WRITE + 64 * 1024)
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue
                if exc.errno == errno.ENODEV:      # unmounted
                    return
                raise
            length, opcode, unique, node, _uid, _gid, _pid, _ext, _pad = IN_HEADER.unpack_from(request)
            body = request[IN_HEADER.size:length]
            if opcode in NO_REPLY:
                continue
            try:
                data = self.handle(opcode, node, body)
            except OSError as exc:
                self.reply(unique, exc.errno or errno.EIO)
                continue
            if data is None:
                self.reply(unique, errno.ENOSYS)
            else:
                self.reply(unique, 0, data)
            if opcode == DESTROY:
                return

    def handle(self, opcode: int, node: int, body: bytes) -> bytes | None:
        ov = self.overlay
        if opcode == INIT:
            major, minor, readahead, flags = struct.unpack_from("<IIII", body)
            return struct.pack("<IIIIHHIIHHI7I", 7, 31, readahead, flags & INIT_FLAGS, 16, 12, MAX_WRITE, 1,
                               MAX_WRITE // PAGE, 0, 0, *([0] * 7))
        if opcode == DESTROY:
            ov.flush_all()
            return b""
        path = self.paths.get(node)
        if path is None:
            raise OSError(errno.ESTALE, "unknown node")
        if opcode == LOOKUP:
            return self.entry(self.child(node, body))
        if opcode == GETATTR:
            return struct.pack("<QII", 0, 0, 0) + self.attr(node, path)
        if opcode == SETATTR:
            return self.setattr(node, path, body)
        if opcode in (OPEN, OPENDIR):
            flags = struct.unpack_from("<I", body)[0]
            if opcode == OPEN and flags & os.O_TRUNC:
                ov.truncate(path, 0)
            return struct.pack("<QII", 0, 0, 0)
        if opcode == READ:
            _fh, offset, size = struct.unpack_from("<QQI", body)
            return ov.read(path, offset, size)
        if opcode == WRITE:
            _fh, offset, size = struct.unpack_from("<QQI", body)
            ov.write(path, offset, body[40:40 + size])
            return struct.pack("<II", size, 0)
        if opcode in (FLUSH, RELEASEDIR, ACCESS):
            return b""
        if opcode == RELEASE:
            held = ov.dirty.get(path)
            if held is not None and held.flush_on_close:
                ov.flush(path)
            return b""
        if opcode == FSYNC:
            ov.flush(path)
            return b""
        if opcode == FSYNCDIR:
            ov.flush_all()
            fd = os.open(ov.real(path), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            return b""
        if opcode == READDIR:
            _fh, offset, size = struct.unpack_from("<QQI", body)
            return self.readdir(path, offset, size)
        if opcode == STATFS:
            s = os.statvfs(ov.real(path))
            return struct.pack("<QQQQQIIII6I", s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree, s.f_bsize,
                               s.f_namemax, s.f_frsize, 0, *([0] * 6))
        if opcode in (CREATE, MKNOD):
            flags, mode, umask = struct.unpack_from("<III", body) if opcode == CREATE else (0, *struct.unpack_from(
                "<I4xI", body))
            if not stat.S_ISREG(mode) and opcode == MKNOD:
                raise OSError(errno.EPERM, "only regular files")
            target = self.child(node, body[16:])
            os.close(os.open(ov.real(target), os.O_CREAT | os.O_WRONLY | (flags & os.O_EXCL),
                             stat.S_IMODE(mode) & ~umask))
            # a new file: the VFS does not truncate what it just created (no auto_da_alloc flag)
            return self.entry(target) + (struct.pack("<QII", 0, 0, 0) if opcode == CREATE else b"")
        if opcode == MKDIR:
            mode, umask = struct.unpack_from("<II", body)
            target = self.child(node, body[8:])
            os.mkdir(ov.real(target), stat.S_IMODE(mode) & ~umask)
            return self.entry(target)
        if opcode == UNLINK:
            target = self.child(node, body)
            os.unlink(ov.real(target))
            ov.forget(target)
            return b""
        if opcode == RMDIR:
            os.rmdir(ov.real(self.child(node, body)))
            return b""
        if opcode in (RENAME, RENAME2):
            return self.rename(opcode, node, body)
        return None

    def setattr(self, node: int, path: str, body: bytes) -> bytes:
        (valid, _pad, _fh, size, _owner, atime, mtime, _ctime, atimensec, mtimensec, _ctimensec, mode, _u4, uid,
         gid, _u5) = struct.unpack_from("<IIQQQQQQIIIIIIII", body)
        real = self.overlay.real(path)
        if valid & FATTR_SIZE:
            self.overlay.truncate(path, size)
        if valid & FATTR_MODE:
            os.chmod(real, stat.S_IMODE(mode))
        if valid & (FATTR_UID | FATTR_GID):
            os.lchown(real, uid if valid & FATTR_UID else -1, gid if valid & FATTR_GID else -1)
        if valid & (FATTR_ATIME | FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW):
            st, now = os.lstat(real), time.time_ns()
            a = now if valid & FATTR_ATIME_NOW else atime * 10**9 + atimensec if valid & FATTR_ATIME else st.st_atime_ns
            m = now if valid & FATTR_MTIME_NOW else mtime * 10**9 + mtimensec if valid & FATTR_MTIME else st.st_mtime_ns
            os.utime(real, ns=(a, m))
        return struct.pack("<QII", 0, 0, 0) + self.attr(node, path)

    def rename(self, opcode: int, node: int, body: bytes) -> bytes:
        newdir, flags, skip = (*struct.unpack_from("<QI", body), 16) if opcode == RENAME2 else (
            *struct.unpack_from("<Q", body), 0, 8)
        old_name, new_name = body[skip:].split(b"\0")[:2]
        old, new = self.child(node, old_name), self.child(newdir, new_name)
        ov = self.overlay
        exists = os.path.lexists(ov.real(new))
        if flags & ~RENAME_NOREPLACE:
            raise OSError(errno.EINVAL, "only RENAME_NOREPLACE")
        if flags & RENAME_NOREPLACE and exists:
            raise OSError(errno.EEXIST, "target exists")
        if exists and old in ov.dirty:
            ov.flush(old)                          # ext4 auto_da_alloc: replace-via-rename
        os.rename(ov.real(old), ov.real(new))
        ov.forget(new)
        ov.moved(old, new)
        for known, path in list(self.paths.items()):
            if path == old or path.startswith(old + "/"):
                self.paths[known] = new + path[len(old):]
        return b""

    def readdir(self, path: str, offset: int, size: int) -> bytes:
        real = self.overlay.real(path)
        names = [".", ".."] + sorted(os.listdir(real))
        out = bytearray()
        for index, name in enumerate(names[offset:], start=offset + 1):
            try:
                st = os.lstat(os.path.join(real, name))
                ino, kind = st.st_ino, stat.S_IFMT(st.st_mode) >> 12
            except FileNotFoundError:
                continue
            raw = name.encode()
            record = struct.pack("<QQII", ino, index, len(raw), kind) + raw
            record += b"\0" * (-len(record) % 8)
            if len(out) + len(record) > size:
                break
            out += record
        return bytes(out)


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def mount(backing: str, mountpoint: str) -> int:
    """Open /dev/fuse and mount it at `mountpoint`; returns the descriptor to serve."""
    fd = os.open("/dev/fuse", os.O_RDWR)
    options = (f"fd={fd},rootmode={stat.S_IFDIR:o},user_id={os.getuid()},group_id={os.getgid()},"
               "allow_other,default_permissions").encode()
    if _libc().mount(b"lazyfs", mountpoint.encode(), b"fuse.lazyfs", MS_NOSUID | MS_NODEV, options) != 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"mount of {backing} at {mountpoint}: {os.strerror(err)}")
    return fd


def unmount(mountpoint: str) -> None:
    """Detach a mount, also one whose server died ("Transport endpoint is not connected")."""
    if _libc().umount2(mountpoint.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount {mountpoint}: {os.strerror(err)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lazyfs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("--expire", type=float, default=30.0, help="flush data held longer than this (0: never)")
    args = parser.parse_args(argv)
    backing, mountpoint = os.path.abspath(args.backing), os.path.abspath(args.mountpoint)
    os.makedirs(backing, exist_ok=True)
    try:
        os.stat(mountpoint)
    except FileNotFoundError:
        os.makedirs(mountpoint)
    except OSError as exc:                     # the mount of a server that died: detach it first
        if exc.errno != errno.ENOTCONN:
            raise
        unmount(mountpoint)
    fd = mount(backing, mountpoint)
    LazyFS(fd, backing, args.expire).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
