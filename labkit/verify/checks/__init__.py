"""The verify suite: pytest + testinfra checks of a running lab, driven by its lab file."""
