"""How every `detrkit` command runs: a user's mistake is one line on stderr and exit status 2, no traceback.

`run_command` turns detrkit.errors' USER_ERRORS into `detrkit CMD: error: ...`; anything else is a bug and keeps
its traceback. `--debug` anywhere on the command line shows the traceback of a user error as well.
"""
from __future__ import annotations

import sys
import traceback
from typing import Callable

from detrkit.errors import USER_ERRORS, message_of


def run_command(name: str, argv: list[str] | None, command: Callable[[list[str]], object]) -> int:
    """Run `command(argv without --debug)`; user errors -> one line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        result = command(argv)
    except KeyboardInterrupt:
        print(f"detrkit {name}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exit_:  # argparse's own usage errors (already printed) and --help
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    except USER_ERRORS as error:
        if debug:
            traceback.print_exc()
        print(f"detrkit {name}: error: {message_of(error)}" + ("" if debug else "  (--debug shows the traceback)"),
              file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0
