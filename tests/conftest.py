import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Unit tests take seconds, labs take minutes: run the labs last.
    items.sort(key=lambda item: item.get_closest_marker("lab") is not None)
