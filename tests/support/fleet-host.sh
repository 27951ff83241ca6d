#!/bin/sh
# One test-fleet host: run by tests/support/fleet.rs as
#   ip netns exec NETNS unshare --mount --uts --ipc --pid --fork --mount-proc \
#       --kill-child sh fleet-host.sh HOSTNAME STATE_DIR
# so it starts as PID 1 of a fresh PID namespace, in a private copy of the
# machine's mounts, inside the host's network namespace. It gives the host its
# own writable /etc, /var, /home, /opt, /srv (overlays on the machine's), a
# fresh /root and /usr/local (like a new server's), empty /run, /tmp and
# /dev/shm, sets the hostname, then becomes the host's sshd. Everything it
# mounts lives only in this mount namespace, so it all disappears when the
# namespace's last process dies: teardown is killing this PID 1.
#
# STATE_DIR was prepared by fleet.rs: upper/work dirs for the overlays (the
# upper /etc already holds hostname, hosts, sshd_config and the host key),
# root/ and usr-local/.
set -eu

name=$1
state=$2

# Our private copy of the machine's mounts includes the nsfs bind mounts under
# /run/netns (and any other tool's). A mount namespace that holds such a mount
# keeps that network namespace alive after `ip netns delete`, so drop them all
# here, before they can pin another host's or another fleet's namespaces.
# Detaching /run/netns takes all of ip's at once (one umount instead of one
# per namespace on the machine, which made bringing up 30 hosts slow).
umount -l /run/netns 2>/dev/null || true
nsfs_mounts=$(awk '{
    for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "nsfs") print $5; break }
}' /proc/self/mountinfo)
for m in $nsfs_mounts; do
    # Already gone when an earlier lazy unmount took its parent with it.
    umount -l "$m" 2>/dev/null || true
done

# volatile: no syncs to the upper dirs (on the machine's disk), neither at
# unmount nor for fsync inside the host; a test host never outlives a crash.
for dir in /etc /var /home /opt /srv; do
    [ -d "$dir" ] || continue
    key=${dir#/}
    mount -t overlay overlay \
        -o "lowerdir=$dir,upperdir=$state/$key.upper,workdir=$state/$key.work,volatile" "$dir"
done
mount --bind "$state/root" /root
mount --bind "$state/usr-local" /usr/local

# Mounted last: the tmpfs on /tmp hides STATE_DIR from the host.
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
# sshd's privilege separation directory, and /var/lock's target.
mkdir -m 0755 /run/sshd /run/lock

hostname "$name"

# sshd as PID 1 reaps every orphan the host's sessions leave (its SIGCHLD
# handler waits for any child), as init would. Its log is our stderr, which
# fleet.rs sent to STATE_DIR/sshd.log.
exec /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config
