"""Audiences: which contacts a task sends to, as a condition on their fields."""
