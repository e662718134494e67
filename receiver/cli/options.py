"""The options commands share: a declared setting as a flag and a variable, and --db checked."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from receiver.settings import describe, env_name, flag_name, range_problem
from receiver.store.backend import is_postgresql, unsupported


class DatabaseType(click.ParamType):  # type: ignore[type-arg]
    """--db: a path (an SQLite file) as a Path, a `postgresql://` URL as it was written."""

    name = "PATH|URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, Path) or is_postgresql(value) or unsupported(value):
            return value
        return Path(value)


def setting_option(
    name: str, help: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The click option of one declared setting, reading its RECEIVER_* variable too; `help`
    when the setting means something else to this command."""
    default, help_text = next((d, h) for n, d, h in describe() if n == name)
    kind: Any = type(default) if default is not None else str
    if name == "db":
        kind = DatabaseType()
    elif isinstance(default, Path):
        kind = click.Path(dir_okay=False, path_type=Path)
    extra: dict[str, Any] = {"is_flag": True} if isinstance(default, bool) else {"type": kind}

    def in_range(context: click.Context, parameter: click.Parameter, value: Any) -> Any:
        """The setting's declared range, checked as the flag or the variable is read."""
        problem = range_problem(name, value)
        if problem:
            raise click.BadParameter(problem)
        return value

    return click.option(
        flag_name(name),
        name,
        default=default,
        envvar=env_name(name),
        show_default=default is not None,
        show_envvar=True,
        help=help or help_text,
        callback=in_range,
        **extra,
    )


def all_settings(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add every declared setting to a command as an option."""
    for name, _, _ in reversed(describe()):
        command = setting_option(name)(command)
    return command


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def check_database(db: Path | str, *, create: bool) -> None:
    """A --db that cannot be the receiver's database is one clear line, not SQLite's traceback.
    `create`: the command writes, and makes the file when it is missing (serve, replay). A
    PostgreSQL database must answer (its tables are made as it is opened)."""
    problem = unsupported(db)
    if problem:
        raise click.ClickException(problem)
    if is_postgresql(db):
        from receiver.store.postgresql import DatabaseUnavailable, check_reachable

        try:
            check_reachable(str(db))
        except DatabaseUnavailable as error:
            raise click.ClickException(str(error)) from None
        return
    db = Path(db)
    folder = db.absolute().parent
    if not db.exists() and not create:
        raise click.ClickException(
            f"no database at {db.absolute()}: pass --db (or set RECEIVER_DB) with the file "
            "`receiver serve` writes; reading never creates one"
        )
    if create and not folder.is_dir():
        raise click.ClickException(
            f"--db {db}: the folder {folder} does not exist: create it, or pass another --db"
        )
    # SQLite in WAL mode writes two files beside the database: the folder must take new files.
    if create and not (os.access(folder, os.W_OK) and (not db.exists() or os.access(db, os.W_OK))):
        raise click.ClickException(
            f"--db {db}: this user cannot write it or its folder {folder}: pass another --db"
        )
    if not db.exists():
        return
    try:
        with db.open("rb") as file:
            head = file.read(len(SQLITE_HEADER))
    except OSError as error:
        raise click.ClickException(
            f"--db {db}: cannot read it ({error.strerror}): fix its rights, or pass another --db"
        ) from None
    if head and head != SQLITE_HEADER:  # an empty file is an empty SQLite database
        new = ", or a new path to create one" if create else " (the file `receiver serve` writes)"
        raise click.ClickException(
            f"--db {db} is not an SQLite database (it begins {head[:8]!r}): --db expects the "
            f"receiver's database{new}"
        )
