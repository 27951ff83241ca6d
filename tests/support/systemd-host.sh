#!/bin/sh
# One systemd test host: run by tests/support/systemd_host.rs as
#   sh systemd-host.sh enter CGROUP NETNS STATE_DIR
# It moves itself into the host's own cgroup CGROUP (created here, under the
# root of the machine's name=systemd and unified hierarchies, or of the
# cgroup2 hierarchy), then re-runs itself as `boot` in the network namespace
# NETNS (made by `ip netns add`) and fresh mount, UTS, IPC, PID and cgroup
# namespaces, as PID 1 of the new PID namespace. (nsenter, not `ip netns
# exec`: that one mounts a sysfs of its own over /sys, hiding the cgroups.) `boot` builds
# the host's root file system and execs systemd, which stays PID 1.
#
# The root is an overlay: the machine's / read-only below, STATE_DIR/upper
# above (prepared by systemd_host.rs: hostname, machine-id, sshd config and
# keys, masked units; kept across the host's reboots). On top: its own /proc
# (kernel knobs read-only, except its own network's), a read-only /sys, its
# own cgroup hierarchies, a minimal /dev of its own (never the machine's), and
# empty tmpfs on /run, /tmp, /var/tmp, /var/log. None of the machine's mounts
# is reachable afterwards: pivot_root, then the old root is detached. All of
# it lives only in this mount namespace and disappears with its last process.
set -eu

enter() {
    cgroup=$1
    netns=$2
    state=$3
    if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
        hierarchies=/sys/fs/cgroup
    else
        hierarchies=/sys/fs/cgroup/systemd
        if [ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then
            hierarchies="$hierarchies /sys/fs/cgroup/unified"
        fi
    fi
    for h in $hierarchies; do
        mkdir -p "$h/$cgroup"
        echo $$ >"$h/$cgroup/cgroup.procs"
    done
    # --propagation private: nothing mounted inside ever reaches the machine.
    exec nsenter --net="/run/netns/$netns" -- \
        unshare --mount --uts --ipc --pid --cgroup --fork --kill-child \
        --propagation private -- sh "$0" boot "$state"
}

# The host's /dev: a tmpfs with the usual character devices, its own devpts
# and /dev/shm, and STATE_DIR/console.log as /dev/console (a plain file, so
# nothing can take it as a terminal; systemd_host.rs masks the gettys).
make_dev() {
    dev=$1
    state=$2
    mount -t tmpfs -o mode=0755,nosuid,noexec tmpfs "$dev"
    mknod -m 0666 "$dev/null" c 1 3
    mknod -m 0666 "$dev/zero" c 1 5
    mknod -m 0666 "$dev/full" c 1 7
    mknod -m 0666 "$dev/random" c 1 8
    mknod -m 0666 "$dev/urandom" c 1 9
    mknod -m 0666 "$dev/tty" c 5 0
    mkdir -m 0755 "$dev/pts"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$dev/pts"
    ln -s pts/ptmx "$dev/ptmx"
    mkdir -m 1777 "$dev/shm"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$dev/shm"
    ln -s /proc/self/fd "$dev/fd"
    ln -s /proc/self/fd/0 "$dev/stdin"
    ln -s /proc/self/fd/1 "$dev/stdout"
    ln -s /proc/self/fd/2 "$dev/stderr"
    : >"$dev/console"
    mount --bind "$state/console.log" "$dev/console"
}

# /sys/fs/cgroup as systemd expects it in a container: the host's part of the
# machine's hierarchies (the cgroup namespace makes CGROUP their root),
# writable; no controllers (resource control stays the machine's).
make_cgroup() {
    fs=$1
    if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
        mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$fs"
        return
    fi
    mount -t tmpfs -o mode=0755,nosuid,nodev,noexec tmpfs "$fs"
    mkdir "$fs/systemd"
    mount -t cgroup -o none,name=systemd,nosuid,nodev,noexec cgroup "$fs/systemd"
    if [ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then
        mkdir "$fs/unified"
        mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$fs/unified"
    fi
    mount -o remount,ro,nosuid,nodev,noexec "$fs"
}

boot() {
    state=$1
    root=$state/root
    # Left by the overlay of an earlier boot of this host (a clean stop).
    rm -rf "$state/work/work"
    mount -t overlay overlay \
        -o "lowerdir=/,upperdir=$state/upper,workdir=$state/work" "$root"

    mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
    # Kernel-wide knobs stay the machine's: read-only, as systemd-nspawn does;
    # the host's own network namespace's stay writable.
    for p in sys sysrq-trigger irq bus; do
        [ -e "$root/proc/$p" ] || continue
        mount --bind "$root/proc/$p" "$root/proc/$p"
        mount -o remount,bind,ro "$root/proc/$p"
    done
    mount --bind "$root/proc/sys/net" "$root/proc/sys/net"
    mount -o remount,bind,rw "$root/proc/sys/net"

    mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
    make_cgroup "$root/sys/fs/cgroup"
    make_dev "$root/dev" "$state"

    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/var/tmp"
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/var/log"

    # The old root goes below the new one's /run (a tmpfs: nothing lands in
    # the upper dir) and is detached at once, with every machine mount on it.
    mkdir "$root/run/old-root"
    cd "$root"
    pivot_root . run/old-root
    cd /
    umount -l /run/old-root
    rmdir /run/old-root

    exec env -i container=shipjar-test \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        /lib/systemd/systemd
}

case ${1:-} in
enter) enter "$2" "$3" "$4" ;;
boot) boot "$2" ;;
*)
    echo "usage: $0 enter CGROUP NETNS STATE_DIR | boot STATE_DIR" >&2
    exit 2
    ;;
esac
