"""Operating a running lab: look at it, load it, break it and heal it."""
