"""The verify suite (pytest + testinfra) and the command that runs it."""
