"""How a labkit VM learns the SSH key it trusts: the host passes it in an SMBIOS OEM string
(type 11), and the guest copies it to the vagrant user's authorized_keys at every boot, before
sshd starts. So a box trusts no key of its own and can be handed to another installation as is;
without such a string no key is accepted at all.

SCRIPT is what the guest runs. It is POSIX sh with od and awk (coreutils and mawk, in every
Debian): starting python3 under software emulation cost over ten seconds of each boot.
"""

from __future__ import annotations

OEM_KEY_PREFIX = "labkit-ssh-key: "
# How a labkit box takes its key; recorded in the box's metadata.
KEY_SOURCE = "smbios-oem-string"

# Arguments, for tests only: the folder of the kernel's per-structure files (CONFIG_DMI_SYSFS),
# the whole table (for kernels without them), and the authorized_keys file to write; its owner
# is the owner of the home folder it is in.
SCRIPT = r"""#!/bin/sh
# labkit: trust the SSH key(s) the host passed as SMBIOS OEM strings (type 11) "labkit-ssh-key: KEY",
# and no other: vagrant's authorized_keys is replaced whole at every boot.
set -eu
entries=${1:-/sys/firmware/dmi/entries}
table=${2:-/sys/firmware/dmi/tables/DMI}
keys=${3:-/home/vagrant/.ssh/authorized_keys}

set -- "$entries"/11-*/raw
[ -r "$1" ] || set -- "$table"
[ -r "$1" ] || set --

# SMBIOS structures laid end to end: a header (type, length of the formatted part, handle), the
# formatted part, then NUL-terminated strings and one more NUL. od gives the bytes as numbers.
found=$( { [ $# -eq 0 ] || od -An -v -tu1 "$@"; } | awk '
function take(s) {
    if (index(s, "labkit-ssh-key: ") != 1) return
    s = substr(s, 17)
    sub(/^[ \t\r\n\f\v]+/, "", s); sub(/[ \t\r\n\f\v]+$/, "", s)
    if (s ~ /^(ssh-|ecdsa-|sk-)[A-Za-z0-9_@.-]+ [A-Za-z0-9+\/=]+$/) print s
}
{ for (i = 1; i <= NF; i++) b[n++] = $i + 0 }
END {
    pos = 0
    while (pos + 4 <= n) {
        kind = b[pos]; length_ = b[pos + 1]
        if (length_ < 4) break                         # not SMBIOS: stop rather than loop
        end = -1
        for (i = pos + length_; i + 1 < n; i++) if (b[i] == 0 && b[i + 1] == 0) { end = i; break }
        if (end < 0) break                             # cut short
        if (kind == 11) {
            s = ""
            for (i = pos + length_; i <= end; i++)
                if (b[i] == 0) { if (s != "") take(s); s = "" } else s = s sprintf("%c", b[i])
        }
        if (kind == 127) break                         # end of table
        pos = end + 2
    }
}')

# Replaced whole, never half written, mode 600, owned by the user whose home it is in.
dir=${keys%/*}
home=${dir%/*}
mkdir -p "$dir"
chmod 700 "$dir"
chown --reference="$home" "$dir"
if [ -n "$found" ]; then printf '%s\n' "$found"; fi > "$keys.new"
chmod 600 "$keys.new"
chown --reference="$home" "$keys.new"
mv -f "$keys.new" "$keys"
echo "$(printf '%s' "$found" | grep -c .) SSH key(s) from the host's OEM strings trusted in $keys"
"""
