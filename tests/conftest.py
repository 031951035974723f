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


@pytest.fixture
def browser():
    """A real browser (Debian's chromium, driven by playwright) and the list of every request a
    page made to anything but a file: a page labkit writes must load nothing from outside."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium")
        page = chromium.new_page()
        outside: list[str] = []
        page.on("request", lambda request: None if request.url.startswith("file:") else outside.append(request.url))
        yield page, outside
        chromium.close()
