#!/bin/sh
# The guest's init (busybox sh). Mounts what the lab needs, then either runs the
# privileged test binaries under CI=true (breaker.mode=suite) or checks that the
# daemon refuses this kernel (breaker.mode=refused). Everything the host reads is a
# line starting with "breaker-vm: " on the serial console. Then powers off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm /dev/pts
mount -t tmpfs tmpfs /dev/shm
# /tmp and /run stay folders of the root filesystem (already in memory): a tmpfs
# mounted there would hide the test binaries when the checkout lives under it.
mkdir -p /tmp /run
chmod 1777 /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
# Not used by the daemon today; mounted as on a usual host, in case a test reads them.
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
ip link set lo up

for m in /lib/modules/breaker/*.ko; do
    [ -e "$m" ] || continue
    insmod "$m" || echo "breaker-vm: cannot load $m"
done

. /etc/breaker-vm/env
echo "breaker-vm: kernel $(uname -r)"

mode=suite
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    breaker.mode=*) mode="${arg#breaker.mode=}" ;;
    esac
done

cd /tmp
case "$mode" in
suite)
    # Hold every cgroup hook breaker uses attached from boot, on a cgroup of its own
    # that no test uses. Each attach type's first attach flips a kernel static key,
    # and the kernel live-patches its code for it; under multi-threaded TCG a vCPU
    # running that code while the other patches it once died of a spurious int3
    # oops. Held on, the keys never flip again while the tests attach and detach.
    mkdir -p /sys/fs/cgroup/vm-static-keys
    "$BREAKER_BIN" calibrate --cgroup /sys/fs/cgroup/vm-static-keys </dev/null >/dev/null 2>/tmp/keys.err &
    for _ in $(seq 100); do
        grep -q attached /tmp/keys.err && break
        sleep 0.1
    done
    grep -q attached /tmp/keys.err || echo "breaker-vm: static keys not held: $(cat /tmp/keys.err)"
    # Emulation runs some ten times slower than the host: waits for something to
    # happen are this many times longer (assertions on latency are not).
    export BREAKER_TEST_PATIENCE=4
    # As CI runs it: a test that cannot run fails instead of skipping.
    export CI=true BREAKER_SKIP_LOG=/tmp/skips.log BREAKER_BIN
    : >"$BREAKER_SKIP_LOG"
    for t in $(cat /etc/breaker-vm/tests); do
        echo "breaker-vm: run $t"
        "$t" </dev/null
        echo "breaker-vm: exit $t $?"
    done
    echo "breaker-vm: skipped $(grep -c . "$BREAKER_SKIP_LOG")"
    ;;
refused)
    "$BREAKER_BIN" run --config /etc/breaker-vm/refused.toml </dev/null >/dev/null 2>/tmp/refused.err
    echo "breaker-vm: refused-status $?"
    while IFS= read -r line; do
        echo "breaker-vm: refused-stderr $line"
    done </tmp/refused.err
    ;;
*)
    echo "breaker-vm: unknown mode $mode"
    ;;
esac

echo "breaker-vm: done"
poweroff -f
# qemu runs with -no-reboot: a reboot ends it too, should power-off not work.
sleep 5
reboot -f
