#!/bin/sh
# Stage 2 of the VM's boot: PID 1 after switch_root (stage 1 is in tests/vm/assets.py).
# Mounts what dockerd and the lab need, loads the modules shoal relies on, runs /vmio/cmd
# (written by tests/vm/vm.py) with its output on the console, reports its exit status as
# "shoal-vm: exit N" (and in /vmio/rc) and powers the VM off. No systemd: dockerd is ready
# in ~20 s without it against ~60 s with it.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# /run holds the lab (dockerd data roots among it): a tmpfs of its own gives overlay2 a
# filesystem it supports (the root's overlay cannot be an upper layer again), not vfs.
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
# The repository is shared read-only; a tmpfs layer on top lets Python cache its bytecode
# (every process would otherwise compile shoal again: seconds each under emulation).
mkdir -p /run/shoal-rw/upper /run/shoal-rw/work
mount -t overlay overlay \
  -o lowerdir=/shoal,upperdir=/run/shoal-rw/upper,workdir=/run/shoal-rw/work /shoal
# dockerd gives its containerd 15 s to start; paging ~190 MB of Go binaries in over 9p under
# emulation on a busy machine took longer. A chown makes overlayfs copy each into the tmpfs
# layer once, so every later exec (and each docker CLI call) reads RAM.
chown 0:0 /usr/sbin/dockerd /usr/bin/containerd /usr/bin/containerd-shim-runc-v2 \
  /usr/sbin/runc /usr/bin/docker /usr/sbin/docker-proxy
hostname shoal-vm
ip link set lo up
# Loaded here so a missing one fails loudly at boot; the rest (nft, xt_*, conntrack, nat)
# the kernel autoloads through /sbin/modprobe when iptables, dockerd or shoal ask.
modules="wireguard veth bridge br_netfilter overlay nf_tables nf_conntrack nf_nat"
if modprobe -a $modules; then
  echo "shoal-vm: kernel $(uname -r), modules loaded: $modules"
  cd /shoal && sh /vmio/cmd
  rc=$?
else
  echo "shoal-vm: modprobe $modules failed"
  rc=90
fi
echo "$rc" > /vmio/rc
echo "shoal-vm: exit $rc"
sync
# Should this shell exit before the power is off, the kernel panics and reboots: qemu runs
# with -no-reboot and exits either way.
echo o > /proc/sysrq-trigger
