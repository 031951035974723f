from pathlib import Path

import pytest

PINNED = Path(__file__).resolve().parent / "pinned"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Unit tests take seconds, labs take minutes: run the labs last.
    items.sort(key=lambda item: item.get_closest_marker("lab") is not None)


def pinned(lab: str) -> dict[str, bool]:
    """Check id -> whether it is a failure scenario, as tests/pinned/LAB.txt lists the checks
    labkit verify must run on a shipped lab."""
    checks = {}
    for line in (PINNED / f"{lab}.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            failover, _, check = line.rpartition(" ")
            checks[check] = failover == "failover"
    return checks
