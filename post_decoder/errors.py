"""Bad input a person can fix: one line on stderr naming the file, line, sample or flag, exit code 2.

Library code raises `InputError` (a `ValueError`, so callers that catch that keep working); every
command's entry point runs through `run_command`, which prints the message without a traceback.
`--debug` on the command line or `POST_DECODER_DEBUG=1` shows the traceback instead.
"""

import os
import sys

DEBUG_ENVIRONMENT_VARIABLE = "POST_DECODER_DEBUG"


class InputError(ValueError):
    """A problem with what the user gave (a file, a flag, a sample), said so they can act on it."""


def debugging(argv=None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENVIRONMENT_VARIABLE, "") not in ("", "0")


def without_debug_flag(argv=None) -> list[str]:
    """The arguments with `--debug` taken out, for parsers that do not declare it."""
    return [argument for argument in (sys.argv[1:] if argv is None else argv) if argument != "--debug"]


def run_command(main, argv=None, program: str | None = None):
    """`main(argv)` with `InputError` turned into `program: error: message` and exit code 2."""
    program = program or os.path.basename(sys.argv[0])
    if not debugging(argv):  # expected library chatter on this path; --debug shows everything
        from .quiet import quiet_expected_messages

        quiet_expected_messages()
    try:
        return main(without_debug_flag(argv))
    except InputError as error:
        if debugging(argv):
            raise
        print(f"{program}: error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
