#!/bin/sh
# Starts the node's Docker Engine in the foreground (it is PID 1's only child that matters:
# `docker kill` of the node container takes the engine and every container in it down at once,
# like a rack losing power).
#
# Environment: FOTA_NODE_STORAGE_DRIVER (default: the first of overlay2, fuse-overlayfs, vfs
# that works on /var/lib/docker here), FOTA_NODE_API (default tcp://0.0.0.0:2375: the test
# swarm's CLI reaches the engine over the project's own bridge network; no TLS, never publish it).
set -eu

# What --privileged would give, without it: the engine here lacks CAP_SYS_RESOURCE, so runc
# refuses --privileged; the node runs with every other capability (scripts/swarm-chaos) and makes
# /sys and the cgroup hierarchies writable itself. cgroup v1: each hierarchy read-only at
# /sys/fs/cgroup/<controllers> is mounted again, read-write; cgroup v2: the unified one.
mount -o remount,rw /sys 2>/dev/null || true
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  mount -o remount,rw /sys/fs/cgroup 2>/dev/null || true
else
  mount | awk '$5 == "cgroup" { print $3, $6 }' | while read -r dir opts; do
    controllers=$(echo "$opts" | tr -d '()' | tr , '\n' \
                  | grep -vE '^(ro|rw|nosuid|nodev|noexec|relatime)$' | paste -sd, -)
    umount "$dir" && mount -t cgroup -o "$controllers" cgroup "$dir"
  done
fi
mountpoint -q /sys/kernel/security || mount -t securityfs none /sys/kernel/security 2>/dev/null || true
# RAM: what a power cut erases (the engine's and containerd's sockets, pid files, task state);
# without it the engine would refuse to start over the pid files of the run before the cut.
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp

works() {  # works DRIVER: can the engine use it on /var/lib/docker in this container?
  probe=/var/lib/docker/.probe-$1
  rm -rf "$probe"; mkdir -p "$probe/l" "$probe/u" "$probe/w" "$probe/m"
  case $1 in
    overlay2) mount -t overlay overlay -o "lowerdir=$probe/l,upperdir=$probe/u,workdir=$probe/w" "$probe/m" 2>/dev/null ;;
    fuse-overlayfs) [ -c /dev/fuse ] && fuse-overlayfs -o "lowerdir=$probe/l,upperdir=$probe/u,workdir=$probe/w" "$probe/m" 2>/dev/null ;;
    vfs) true ;;
  esac || { rm -rf "$probe"; return 1; }
  umount "$probe/m" 2>/dev/null || true
  rm -rf "$probe"
}

driver=${FOTA_NODE_STORAGE_DRIVER:-}
if [ -z "$driver" ]; then
  # Keep the driver the engine's state was made with (a node coming back after a power cut).
  for d in overlay2 fuse-overlayfs vfs; do
    if [ -d "/var/lib/docker/$d" ]; then driver=$d; break; fi
  done
fi
if [ -z "$driver" ]; then
  for d in overlay2 fuse-overlayfs vfs; do
    if works "$d"; then driver=$d; break; fi
  done
fi
echo "swarm-node: storage driver $driver" >&2

exec dockerd --host unix:///var/run/docker.sock --host "${FOTA_NODE_API:-tcp://0.0.0.0:2375}" --tls=false \
  --storage-driver "$driver" --log-driver json-file --log-opt max-size=5m "$@"
