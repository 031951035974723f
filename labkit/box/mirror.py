"""The Debian mirror the host's apt already uses, read from its sources (one-line and deb822
formats), so debootstrap goes where apt can."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

FALLBACK_MIRROR = "http://deb.debian.org/debian"


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    for text, deb822 in _apt_source_texts(apt_dir):
        found = mirror_from_sources(text, deb822=deb822)
        if found:
            return found
    return FALLBACK_MIRROR


def _apt_source_texts(apt_dir: Path) -> Iterator[tuple[str, bool]]:
    files = [apt_dir / "sources.list"]
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            yield path.read_text(errors="replace"), path.suffix == ".sources"
        except OSError:
            continue


def mirror_from_sources(text: str, *, deb822: bool) -> str | None:
    """First Debian archive URI in one apt sources file (one-line or deb822 format)."""
    entries = _deb822_entries(text) if deb822 else _one_line_entries(text)
    for uri, suite in entries:
        if _is_debian_archive(uri, suite):
            return uri.rstrip("/")
    return None


def _one_line_entries(text: str) -> Iterator[tuple[str, str]]:
    for line in text.splitlines():
        # "deb [arch=amd64 signed-by=...] URI SUITE COMPONENTS..."; options may hold spaces
        m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
        if m:
            yield m.group(1), m.group(2)


def _deb822_entries(text: str) -> Iterator[tuple[str, str]]:
    from debian.deb822 import Deb822  # only a box build reads apt's sources: other commands start without it

    for stanza in Deb822.iter_paragraphs(text.splitlines(keepends=True)):
        if "deb" not in stanza.get("Types", "").split() or stanza.get("Enabled", "yes").lower() == "no":
            continue
        suites = stanza.get("Suites", "").split() or [""]
        for uri in stanza.get("URIs", "").split():
            yield uri, suites[0]


def _is_debian_archive(uri: str, suite: str) -> bool:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https", "file") or suite.endswith("-security"):
        return False
    segments = [s for s in parts.path.split("/") if s]
    # ".../debian" or ".../debian/<snapshot date>", never debian-security, -ports, -debug
    if "debian" in segments:
        return True
    # a mirror that serves the archive at its root, e.g. http://debian.example.org/
    return not segments and "debian" in parts.netloc and "security" not in parts.netloc
