#!/usr/bin/python3
"""Runs in the guest at every boot, before sshd: the SSH key the vagrant user accepts is the one
the host passed in an SMBIOS OEM string (type 11), so a box trusts no key of its own and can be
handed to another installation as is. Without such a string no key is accepted at all.

The box has python3 but no dmidecode. This file is copied into the image as it is: it imports
nothing from labkit.
"""

from __future__ import annotations

import os
import pwd
import re
import sys
from pathlib import Path

OEM_KEY_PREFIX = "labkit-ssh-key: "
# How a labkit box takes its key; recorded in the box's metadata.
KEY_SOURCE = "smbios-oem-string"

ENTRIES = Path("/sys/firmware/dmi/entries")  # one file per structure (CONFIG_DMI_SYSFS)
TABLE = Path("/sys/firmware/dmi/tables/DMI")  # the whole table, for kernels without dmi-sysfs
USER = "vagrant"
OEM_STRINGS = 11  # SMBIOS structure type
END_OF_TABLE = 127
KEY = re.compile(r"(ssh-|ecdsa-|sk-)[\w@.-]+ [A-Za-z0-9+/=]+")


def oem_strings(blob: bytes) -> list[str]:
    """The OEM strings in SMBIOS structures laid end to end: each is a header (type, length of
    the formatted part, handle), the formatted part, then NUL-terminated strings ending with an
    extra NUL."""
    found = []
    pos = 0
    while pos + 4 <= len(blob):
        kind, length = blob[pos], blob[pos + 1]
        if length < 4:
            break  # not SMBIOS: stop rather than loop
        end = blob.find(b"\0\0", pos + length)
        if end < 0:
            break  # cut short
        if kind == OEM_STRINGS:
            found += [s.decode("utf-8", "replace") for s in blob[pos + length : end].split(b"\0") if s]
        if kind == END_OF_TABLE:
            break
        pos = end + 2
    return found


def keys(strings: list[str]) -> list[str]:
    """The public keys the host passed, one per labkit OEM string; anything else is ignored."""
    found = []
    for text in strings:
        if text.startswith(OEM_KEY_PREFIX):
            key = text[len(OEM_KEY_PREFIX) :].strip()
            if KEY.fullmatch(key):
                found.append(key)
    return found


def firmware_blobs(entries: Path = ENTRIES, table: Path = TABLE) -> list[bytes]:
    raws = sorted(entries.glob(f"{OEM_STRINGS}-*/raw"))
    if raws:
        return [p.read_bytes() for p in raws]
    return [table.read_bytes()] if table.exists() else []


def write_authorized_keys(path: Path, found: list[str], uid: int, gid: int) -> None:
    """Replace the file whole (never a half-written file sshd could read), mode 600."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    os.chown(path.parent, uid, gid)
    partial = path.with_name(path.name + ".new")
    partial.write_text("".join(k + "\n" for k in found))
    partial.chmod(0o600)
    os.chown(partial, uid, gid)
    partial.replace(path)


def main() -> int:
    found = keys([s for blob in firmware_blobs() for s in oem_strings(blob)])
    user = pwd.getpwnam(USER)
    write_authorized_keys(Path(user.pw_dir) / ".ssh/authorized_keys", found, user.pw_uid, user.pw_gid)
    print(f"{len(found)} SSH key(s) from the host's OEM strings trusted for {USER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
