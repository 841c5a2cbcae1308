"""Health: the checks that say first when something is wrong (`checks.py`)."""
