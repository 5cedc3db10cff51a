#!/bin/sh
# Starts the node's Docker Engine in the foreground (it is PID 1's only child that matters:
# `docker kill` of the node container takes the engine and every container in it down at once,
# like a rack losing power).
#
# Environment: FOTA_NODE_STORAGE_DRIVER (default: the first of overlay2, fuse-overlayfs, vfs
# that works on /var/lib/docker here), FOTA_NODE_API (default tcp://0.0.0.0:2375: the test
# swarm's CLI reaches the engine over the project's own bridge network; no TLS, never publish it).
set -eu

# cgroup v1 and v2 both: a privileged container sees the host's hierarchies read-write.
mountpoint -q /sys/kernel/security || mount -t securityfs none /sys/kernel/security 2>/dev/null || true
mountpoint -q /tmp || mount -t tmpfs tmpfs /tmp
# A power cut leaves stale pid files behind: the engine refuses to start over them.
rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid /run/docker.pid

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

exec dockerd --host unix:///var/run/docker.sock --host "${FOTA_NODE_API:-tcp://0.0.0.0:2375}" \
  --storage-driver "$driver" --log-driver json-file --log-opt max-size=5m "$@"
