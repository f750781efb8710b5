"""The `peft-grow` command (the `[cli]` extra: typer and rich). `app.py` holds the commands, `render.py` the
tables they print; `main` is the console-script entry point."""

from __future__ import annotations

import sys

from .._extras import EXTRAS, missing_extra_message


def main(argv: list[str] | None = None) -> None:
    """Run the command line; without the `[cli]` extra, say in one line how to install it (exit code 2)."""
    try:
        from .app import main as run
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] not in EXTRAS:
            raise
        print(f"error: {missing_extra_message(error.name, 'The peft-grow command')}", file=sys.stderr)
        sys.exit(2)
    run(argv)


__all__ = ["main"]
