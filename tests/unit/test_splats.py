"""Splats read from kernel logs. Each sample is the first lines of a real kernel's log as posted
in a public bug report (the address above each); the middle of long module lists is cut."""

import pytest

from labkit.operate.splats import merged, moment, parse, taint_flags, taint_text

# https://github.com/sipwise/rtpengine/issues/1618 (Fedora 6.1.13), dmesg -T style prefix
WARNING = """\
[Fri Feb 24 17:34:53 2023] ------------[ cut here ]------------
[Fri Feb 24 17:34:53 2023] WARNING: CPU: 0 PID: 1184 at net/core/stream.c:212 sk_stream_kill_queues+0xde/0xf0
[Fri Feb 24 17:34:53 2023] Modules linked in: nf_nat_sip tls nf_log_syslog nft_log
"""

# https://github.com/oracle/linux-uek/issues/15 (syslog lines with the kernel's timestamp)
WARNING_SYSLOG = """\
Apr 18 08:58:32 stahl2 kernel: [  236.276791] ------------[ cut here ]------------
Apr 18 08:58:32 stahl2 kernel: [  236.278671] WARNING: CPU: 5 PID: 0 at net/core/stream.c:212 sk_stream_kill_queues+0xc5/0xd2
Apr 18 08:58:32 stahl2 kernel: [  236.280615] Modules linked in: xt_multiport sctp pppoe tun
Apr 18 08:58:32 stahl2 kernel: [  236.289602] CPU: 5 PID: 0 Comm: swapper/5 Tainted: G        W         5.4.17-2136.318.7.1.el7uek.x86_64 #2
"""

# https://github.com/multipath-tcp/mptcp_net-next/issues/433 (printk caller ids: [T14140])
KASAN = """\
[ 1502.520319][T14140] ==================================================================
[ 1502.527398][T14140] BUG: KASAN: slab-use-after-free in kernfs_test_super (fs/kernfs/mount.c:286)
[ 1502.534436][T14140] Read of size 8 at addr ffff88800853aa88 by task ip/14140
[ 1502.541084][T14140]
[ 1502.543122][T14140] CPU: 1 PID: 14140 Comm: ip Tainted: G                 N 6.5.0-g7088bf643393 #1
"""

# https://github.com/tempesta-tech/tempesta/issues/1246
UBSAN = """\
[   51.679524] UBSAN: Undefined behaviour in /root/tempesta/tempesta_fw/gfsm.c:226:25
[   51.683145] shift exponent 513 is too large for 32-bit type 'int'
[   51.685696] CPU: 2 PID: 0 Comm: swapper/2 Tainted: G           O    4.14.32-tfw-asan #0.0.0
"""

# https://github.com/koverstreet/bcachefs/issues/187
LOCKDEP = """\
[ 1028.365890] ======================================================
[ 1028.366165] WARNING: possible circular locking dependency detected
[ 1028.366348] 5.10.0-00479-g1c1358a0a606 #87 Tainted: G                T
[ 1028.366620] ------------------------------------------------------
[ 1028.366838] kswapd0/79 is trying to acquire lock:
"""

# https://github.com/cilium/tetragon/issues/328
RCU = """\
[  103.087243] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:
[  103.087558] rcu: \t1-...!: (0 ticks this GP) idle=cf8/0/0x0 softirq=20/20 fqs=0
[  103.087821] \t(detected by 0, t=38227 jiffies, g=-1127, q=10)
"""

# https://github.com/sonic-net/sonic-buildimage/issues/4822 (Debian 4.19)
HUNG = """\
[26825.855448] INFO: task kworker/2:1:5747 blocked for more than 120 seconds.
[26825.860651]       Tainted: G        W   E     4.19.0-6-amd64 #1 Debian 4.19.67-2+deb10u2
[26825.866477] "echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.
[26825.873379] INFO: task ntpd:11794 blocked for more than 120 seconds.
[26825.876949]       Tainted: G        W   E     4.19.0-6-amd64 #1 Debian 4.19.67-2+deb10u2
"""

# https://github.com/aabc/ipt-netflow/issues/145 (CentOS 8)
SOFT_LOCKUP = """\
Aug  6 10:24:42 uz kernel: watchdog: BUG: soft lockup - CPU#6 stuck for 22s! [kworker/6:2:42513]
Aug  6 10:24:42 uz kernel: Modules linked in: nft_chain_nat_ipv4 ipt_MASQUERADE
"""

# A bookworm guest's console while it boots: no splat in it
BOOT = """\
[    0.000000] Linux version 6.1.0-40-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.153-1
[    0.000000] Command line: BOOT_IMAGE=/boot/vmlinuz-6.1.0-40-amd64 root=UUID=... ro console=ttyS0
[    1.204112] Run /init as init process
[    4.881020] systemd[1]: Detected virtualization kvm.
"""


@pytest.mark.parametrize(
    "text, kind, title",
    [
        (WARNING, "WARNING", "WARNING: CPU: 0 PID: 1184 at net/core/stream.c:212 sk_stream_kill_queues+0xde/0xf0"),
        (KASAN, "KASAN", "BUG: KASAN: slab-use-after-free in kernfs_test_super (fs/kernfs/mount.c:286)"),
        (UBSAN, "UBSAN", "UBSAN: Undefined behaviour in /root/tempesta/tempesta_fw/gfsm.c:226:25"),
        (LOCKDEP, "lockdep", "WARNING: possible circular locking dependency detected"),
        (RCU, "RCU stall", "rcu: INFO: rcu_sched detected stalls on CPUs/tasks:"),
        (SOFT_LOCKUP, "soft lockup", "watchdog: BUG: soft lockup - CPU#6 stuck for 22s! [kworker/6:2:42513]"),
    ],
)
def test_each_kind_of_splat_is_found_with_its_first_line(text, kind, title):
    (splat,) = parse(text, "lb0")
    assert (splat.node, splat.kind, splat.title) == ("lb0", kind, title)
    assert splat.lines[0] == title


def test_a_splat_keeps_its_lines_without_the_log_prefix_and_its_timestamp():
    (splat,) = parse(WARNING_SYSLOG, "rs1")
    assert splat.seconds == 236.278671
    assert splat.lines == [
        "WARNING: CPU: 5 PID: 0 at net/core/stream.c:212 sk_stream_kill_queues+0xc5/0xd2",
        "Modules linked in: xt_multiport sctp pppoe tun",
        "CPU: 5 PID: 0 Comm: swapper/5 Tainted: G        W         5.4.17-2136.318.7.1.el7uek.x86_64 #2",
    ]


def test_a_kasan_report_ends_at_its_blank_line_and_is_no_plain_bug():
    (splat,) = parse(KASAN, "lb0")
    assert splat.seconds == 1502.527398
    assert splat.lines[1] == "Read of size 8 at addr ffff88800853aa88 by task ip/14140"
    assert len(splat.lines) == 2


def test_two_hung_tasks_are_two_splats():
    found = parse(HUNG, "lb1")
    assert [s.kind for s in found] == ["hung task", "hung task"]
    assert found[1].title == "INFO: task ntpd:11794 blocked for more than 120 seconds."
    assert found[0].lines[1].strip().startswith("Tainted: G        W   E")


def test_a_clean_boot_has_no_splat():
    assert parse(BOOT, "cl0") == []


def test_the_same_splat_read_from_console_and_dmesg_counts_once():
    console, dmesg = (
        parse(WARNING_SYSLOG, "lb0"),
        parse(WARNING_SYSLOG.replace("Apr 18 08:58:32 stahl2 kernel: ", ""), "lb0"),
    )
    assert len(merged(console, dmesg)) == 1


def test_the_same_splat_on_another_boot_has_the_same_key():
    one, two = parse(HUNG, "lb1")[0], parse(HUNG.replace("5747", "6001"), "lb1")[0]
    assert one.key() == two.key()
    assert parse(WARNING, "lb0")[0].key() != parse(WARNING.replace("stream.c:212", "stream.c:213"), "lb0")[0].key()


@pytest.mark.parametrize(
    "value, flags",
    [(0, []), (512, ["W"]), (4097, ["P", "O"]), (64, ["U"]), (1 << 30, ["bit 30"]), (8192 | 4096, ["O", "E"])],
)
def test_taint_flags_are_decoded_by_bit(value, flags):
    assert taint_flags(value) == flags


def test_a_taint_flag_says_what_it_means():
    assert taint_text("U") == "U: taint requested by a userspace application"
    assert taint_text("W") == "W: kernel issued a warning"


def test_a_splat_is_placed_in_the_step_it_came_in():
    marks = [("verify", 100.0), ("bench", 300.0)]
    assert moment(150.4, marks) == "during verify, 50 s in"
    assert moment(320.0, marks) == "during bench, 20 s in"
    assert moment(40.0, marks) == "during boot, 40 s after it began"
    assert moment(None, marks) == "when is unknown (no timestamp)"


def test_a_task_reported_again_as_it_stays_blocked_is_the_same_splat():
    # a bookworm-backports guest here (6.12.95), its root frozen under a writer for 6 s
    again = [
        parse(f"[  312.{n}00000] INFO: task touch:416 blocked for more than {n} seconds.\n", "lb1")[0]
        for n in (1, 2, 3)
    ]
    assert len({s.key() for s in again}) == 1
