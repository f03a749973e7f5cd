"""Exit codes of ``crdtstore``'s commands, and the error that carries one to ``main``.

Scripts branch on these, so they never change meaning: 0 done, 1 the key (or namespace,
or element) asked for is not there, 2 the command line or its input is wrong and nothing
was written, 3 the directory or the node could not be reached or failed at run time.
"""

from __future__ import annotations

OK = 0
NOT_FOUND = 1
USAGE = 2
RUNTIME = 3


class CliError(Exception):
    """A failure to report on one line of stderr, then exit with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
