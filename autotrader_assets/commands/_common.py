"""Helpers shared by the command groups: the actor, option checks, one-line errors, tables."""

from __future__ import annotations

import functools
import getpass
from typing import Any, Callable, Sequence

import click


def default_actor() -> str:
    """The login name (getpass: $LOGNAME or $USER, then the OS account), or "" when none is known."""
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


def nonblank(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Option callback: refuse a blank value (a reason of spaces says nothing) and control
    characters (a newline would print as a forged row of the history tables), by the rule the
    stores apply (``deploy_ops.text.required_text``), before anything runs."""
    from deploy_ops.text import required_text

    if value is not None and not value.strip():
        raise click.BadParameter("must not be blank", ctx=ctx, param=param)
    if value is not None:
        try:
            required_text(param.name or "value", value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc
    return value


def printable(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Option callback for optional text (may be empty): control characters refused, as ``nonblank``."""
    from deploy_ops.text import optional_text

    try:
        optional_text(param.name or "value", value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc
    return value


def one_line(text: str) -> str:
    """The first non-blank line of an error: what a terminal user needs, without the traceback."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


def domain_errors(
    database: str, refusals: Callable[[], tuple[type[BaseException], ...]]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a command: the errors ``refusals()`` names and SQL errors of the ``database``
    become one-line ``Error: ...`` messages with exit code 1. ``refusals`` is called only when a
    command fails, so a group imports its domain modules only on that path."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            import sqlalchemy as sa

            try:
                return fn(*args, **kwargs)
            except sa.exc.SQLAlchemyError as exc:
                detail = one_line(str(getattr(exc, "orig", None) or exc))
                raise click.ClickException(f"{database} database error: {detail}") from exc
            except Exception as exc:
                from autotrader_assets.settings import SettingsError

                if isinstance(exc, SettingsError):
                    # A configuration refusal lists every problem, one per line: all of it is the message.
                    raise click.ClickException(str(exc).strip()) from exc
                if isinstance(exc, refusals()):
                    raise click.ClickException(one_line(str(exc))) from exc
                raise

        return wrapper

    return decorate


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns, two spaces apart, sized to the widest cell."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
