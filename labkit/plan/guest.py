"""The shell helpers a node's steps call, in one place: each has the POSIX sh it runs in the guest
(the box's /bin/sh is dash) and, for those that change something, the commands a person would
type for it, which `labkit explain` prints. The script sent to a node starts with PRELUDE."""

from __future__ import annotations

import base64
import shlex
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Helper:
    name: str
    body: str  # the sh function's body
    # The commands it stands for, shown by `labkit explain`; None for a check (a step's `unless`).
    shown: Callable[..., list[str]] | None = None


def _file(path: str, mode: str, data: str) -> list[str]:
    content = base64.b64decode(data)
    try:
        text = content.decode()
    except UnicodeDecodeError:
        return [f"write {path} ({len(content)} bytes, mode {mode})"]
    return [f"cat > {path} <<'EOF'", *text.splitlines(), "EOF"]


# The checks run on every provision, most of them with nothing to do: under emulation each
# process they start costs tens of milliseconds, so they start as few as they can.
CHECKS = [
    Helper("has_commands", 'for c in "$@"; do command -v "$c" >/dev/null || return 1; done'),
    Helper(
        "hostname_is",
        'read -r h < /proc/sys/kernel/hostname && [ "$h" = "$1" ] '
        '&& read -r h < /etc/hostname && [ "$h" = "$1" ] && grep -q "^127.0.1.1 $1\\$" /etc/hosts',
    ),
    Helper("same", '[ -f "$1" ] && [ "$(base64 -w0 < "$1")" = "$2" ]'),
    # the system clock within 2 s of the RTC, which QEMU keeps at the host's time (a VM with no RTC passes)
    Helper(
        "clock_is_rtc",
        "[ -r /sys/class/rtc/rtc0/since_epoch ] || return 0\n"
        "read -r rtc < /sys/class/rtc/rtc0/since_epoch; late=$((rtc - $(date +%s))); [ ${late#-} -le 2 ]",
    ),
    Helper("link_named", 'link_up "$1" && read -r mac < "/sys/class/net/$1/address" && [ "$mac" = "$2" ]'),
    Helper(
        "link_up",
        '[ -r "/sys/class/net/$1/flags" ] && read -r flags < "/sys/class/net/$1/flags" && [ $((flags & 1)) -eq 1 ]',
    ),  # IFF_UP
    Helper("has_addr", 'case " $(ip -o addr show dev "$1" 2>/dev/null) " in *" $2 "*) ;; *) return 1 ;; esac'),
    # inside a container's network namespace (ip -n NAME)
    Helper(
        "netns_has_addr", 'case " $(ip -n "$1" -o addr show dev "$2" 2>/dev/null) " in *" $3 "*) ;; *) return 1 ;; esac'
    ),
    Helper("netns_route_via", '[ "$(ip -n "$1" route show default 2>/dev/null | awk \'{print $3}\')" = "$2" ]'),
    # the routing mesh: a device inside a namespace is there and up; the VXLAN floods to a peer
    Helper(
        "netns_link_up",
        'ip -n "$1" -o link show dev "$2" 2>/dev/null | grep -q "[<,]UP[,>]"',
    ),
    Helper("netns_fdb_has", 'bridge -n "$1" fdb show dev "$2" 2>/dev/null | grep -q "^00:00:00:00:00:00 dst $3 "'),
    Helper(
        "netns_sysctls_are",
        'ns=$1; shift; keys=; want=; for kv in "$@"; do keys="$keys ${kv%%=*}"; want="$want ${kv#*=}"; done\n'
        '[ "$(echo $(ip netns exec "$ns" sysctl -n $keys 2>/dev/null))" = "$(echo $want)" ]',
    ),
    Helper("fou_port", 'ip fou show 2>/dev/null | grep -q "^port $1 gue"'),
    Helper(
        "route_via",
        'case "$1" in *:*) family=-6;; *) family=-4;; esac\n'
        '[ "$(ip $family route show exact "$1" | awk \'{print $3}\')" = "$2" ]',
    ),
    # One sysctl for all the keys. (Not `read` from /proc/sys: dash reads a byte at a time, and
    # a numeric setting gives only its first byte to such reads.)
    Helper(
        "sysctls_are",
        'keys=; want=; for kv in "$@"; do keys="$keys ${kv%%=*}"; want="$want ${kv#*=}"; done\n'
        '[ "$(echo $(sysctl -n $keys 2>/dev/null))" = "$(echo $want)" ]',
    ),
    Helper("ipvs_matches", '[ "$(ipvsadm-save -n | sort)" = "$(sort "$1")" ]'),
    Helper(
        "applied",
        'unit=$1; shift; systemctl is-active -q "$unit" || return 1\n'
        'for f in "$@"; do [ -n "$(find "/run/labkit-$unit.applied" -newer "$f" 2>/dev/null)" ] || return 1; done',
    ),
    Helper("size_is", '[ "$(stat -c %s "$1" 2>/dev/null)" = "$2" ]'),
    Helper("started_after", 'systemctl is-active -q "$1" && [ -n "$(find "/run/$1.pid" -newer "$2" 2>/dev/null)" ]'),
    # netem is the root qdisc on exactly the devices given as DEV=HANDLE, each with its handle
    # (tc qdisc show: "qdisc netem 1a2b: dev int root refcnt 2 limit 1000 delay 20ms")
    Helper(
        "netem_only",
        'tc qdisc show | awk -v want=" $* " \'$2 == "netem" && $6 == "root" '
        '{n++; if (!index(want, " " $5 "=" $3 " ")) bad = 1} END {exit bad || n != split(want, w, " ")}\'',
    ),
]

COMMANDS = [
    Helper(
        "apt_install",
        'DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"',
        lambda *pkgs: [shlex.join(["apt-get", "install", "-y", *pkgs])],
    ),
    Helper(
        "set_hostname",
        'hostname "$1"; echo "$1" > /etc/hostname\n'
        "sed -i '/^127.0.1.1 /d' /etc/hosts; echo \"127.0.1.1 $1\" >> /etc/hosts",
        lambda name: [f"hostname {name}", f"echo {name} > /etc/hostname"],
    ),
    Helper(
        "clock_from_rtc",
        'date -s "@$(cat /sys/class/rtc/rtc0/since_epoch)" >/dev/null',
        lambda: ["date -s @$(cat /sys/class/rtc/rtc0/since_epoch)"],
    ),
    Helper(
        "put",
        'mkdir -p "$(dirname "$1")"\n'
        'echo "$3" | base64 -d > "$1.labkit-new"; chmod "$2" "$1.labkit-new"; mv "$1.labkit-new" "$1"',
        _file,
    ),
    Helper(
        "name_link",
        'dev=$(ip -br link | awk -v mac="$2" \'$3 == mac {sub("@.*", "", $1); print $1}\')\n'
        '[ -n "$dev" ] || { echo "no network interface has the MAC address $2" >&2; return 1; }\n'
        'if [ "$dev" != "$1" ]; then ip link set dev "$dev" down; ip link set dev "$dev" name "$1"; fi\n'
        'ip link set dev "$1" up',
        lambda name, mac: [f"ip link set dev <the NIC with MAC {mac}> name {name}", f"ip link set dev {name} up"],
    ),
    Helper(
        "ipvs_load",
        "# -E/-e edit a service or server in place (connections stay); they fail for new ones.\n"
        "sed -e 's/^-A /-E /' -e 's/^-a /-e /' \"$1\" | ipvsadm-restore 2>/dev/null || true\n"
        'ipvs_matches "$1" || { ipvsadm -C; ipvsadm-restore < "$1"; }',
        lambda path: [f"ipvsadm-restore < {path}"],
    ),
    Helper(
        "random_file",
        'mkdir -p "$(dirname "$1")"; head -c "$2" /dev/urandom > "$1"',
        lambda path, size: [f"head -c {size} /dev/urandom > {path}"],
    ),
    # `systemctl enable` runs update-rc.d for a unit with an init script (nginx, keepalived), 3-8 s
    # of perl under emulation, for the links of an init this VM does not use (SYSTEMCTL_SKIP_SYSV
    # leaves them out); and it reloads systemd, which the steps do themselves when a unit changes.
    Helper(
        "enable_unit",
        'systemctl is-enabled -q "$1" || SYSTEMCTL_SKIP_SYSV=1 systemctl enable -q --no-reload "$1"',
        lambda unit: [f"systemctl enable {unit}"],
    ),
    Helper(
        "netem_put",
        'dev=$1; handle=$2; shift 2; tc qdisc replace dev "$dev" root handle "$handle" netem "$@"',
        lambda dev, handle, *words: [
            shlex.join(["tc", "qdisc", "replace", "dev", dev, "root", "handle", handle, "netem", *words])
        ],
    ),
    Helper(
        "netem_off",
        'case "$(tc qdisc show dev "$1" root)" in "qdisc netem "*) tc qdisc del dev "$1" root ;; esac',
        lambda dev: [f"tc qdisc del dev {dev} root  # where netem is"],
    ),
    Helper(
        "apply_config",
        'enable_unit "$1"; systemctl reload-or-restart "$1"; touch "/run/labkit-$1.applied"',
        lambda unit: [f"systemctl reload-or-restart {unit}"],
    ),
]

HELPERS = {h.name: h for h in CHECKS + COMMANDS}

# Programs a step may call directly, besides the helpers.
PROGRAMS = {"ip", "bridge", "sysctl", "modprobe", "iptables", "systemctl", "rm", "test"}


def _function(helper: Helper) -> str:
    body = "".join(f"  {line}\n" for line in helper.body.splitlines())
    return f"{helper.name}() {{\n{body}}}\n"


PRELUDE = (
    "set -eu\n"
    "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    "current=start\n"
    "trap '[ $? -eq 0 ] || echo \"labkit-failed: $current\" >&2' EXIT\n"
    'changed() { echo "labkit-changed: $1"; }\n' + "".join(_function(h) for h in CHECKS + COMMANDS)
)


def shown(words: tuple[str, ...]) -> list[str]:
    """A step's command as a person would type it: a helper's own commands, else the words."""
    helper = HELPERS.get(words[0])
    if helper is not None and helper.shown is not None:
        return helper.shown(*words[1:])
    return [shlex.join(words)]
