"""Helpers shared by the command groups."""
from __future__ import annotations

import getpass
import os

import click


def default_actor() -> str:
    """$USER first (what operators expect in audit rows), then the OS account name."""
    user = os.environ.get("USER")
    if user:
        return user
    try:
        return getpass.getuser()
    except Exception:  # getpass raises different errors per platform when no name is known
        return ""


def resolve_actor(actor: str | None) -> str:
    """The actor written to audit rows: the option, else the login; never empty."""
    actor = (actor or default_actor()).strip()
    if not actor:
        raise click.UsageError("no actor: pass --actor NAME (or set $USER)")
    return actor
