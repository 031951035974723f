"""A lab described without booting it: its commands with reasons, its picture."""
