"""Database URLs of the shared study: which driver a URL needs, and one clear line when it is not installed.

`pip install "elastic-nas[postgres]"` installs psycopg2, so the documented form is `postgresql+psycopg2://...`.
A bare `postgresql://` means "SQLAlchemy's default PostgreSQL driver", which is psycopg 3 since SQLAlchemy 2.1: when
only psycopg2 is installed, that URL is taken to mean psycopg2 rather than failing.
"""

from __future__ import annotations

import importlib.util

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# The pip command that brings each DBAPI module SQLAlchemy may ask for.
PACKAGES = {
    "psycopg2": '"elastic-nas[postgres]" (it installs psycopg2-binary)',
    "psycopg": '"psycopg[binary]", or install "elastic-nas[postgres]" and use postgresql+psycopg2://',
    "pymysql": "pymysql",
    "MySQLdb": "mysqlclient",
}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_url(url: str) -> str:
    """`url` with its driver made explicit where the default one is missing but psycopg2 is there."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url  # open_storage reports it
    if parsed.drivername == "postgresql" and not _installed("psycopg") and _installed("psycopg2"):
        return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return url


def missing_driver_message(url: str, module: str) -> str:
    """One line: the storage `url` needs DBAPI `module`, and how to install it."""
    package = PACKAGES.get(module, module)
    return f"the optuna storage {redact(url)!r} needs the database driver {module!r}: pip install {package}"


def redact(url: str) -> str:
    """`url` with its password hidden, for messages and records."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url
