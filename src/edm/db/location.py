"""Where the database is: EDM_DATABASE_URL, else a file in the user's data directory.

Read here without pydantic-settings because every command needs this one value before
anything else, and importing pydantic costs quick commands (`edm task show`) about a
tenth of a second. `Settings.database_url` reads the same variable the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

ENVIRONMENT_VARIABLE = "EDM_DATABASE_URL"


def default_database_path() -> Path:
    """A file in the user's data directory: the same database from whatever folder edm runs in.

    Only a path: the directory is made when the database is opened (see `db.engine`), so
    reading the settings creates nothing.
    """
    from platformdirs import user_data_path

    return user_data_path("edm", appauthor=False) / "edm.db"


def default_database_url() -> str:
    return f"sqlite:///{default_database_path()}"


def configured_database_url() -> str:
    """EDM_DATABASE_URL, or the default when it is unset or empty."""
    return os.environ.get(ENVIRONMENT_VARIABLE, "").strip() or default_database_url()
