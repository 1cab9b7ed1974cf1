"""The project's own errors: what the CLI prints as one line, where anything else is a bug with a traceback.

    Error            the base: a run cannot go on, for a reason the message states (`error: MESSAGE`, exit 2)
    InputError       what the user gave is wrong: a file, a folder, a flag, a dataset, a checkpoint. The
                     message names it (the path, and the line where there is one, or the flag) and says what to do.

InputError is also a ValueError, so code that catches ValueError, as callers of a library expect, still does.
The CLI (cli.py `main`) turns Error and OSError (a missing file, a full disk, a permission) into one line on stderr
and exit status 2; `--debug` shows the traceback instead.
"""


class Error(Exception):
    """A run cannot go on, for a reason its message states; not a bug."""


class InputError(Error, ValueError):
    """Something the user gave is wrong; the message names it and says what to do."""
