"""The one exception type the toolkit raises for problems a user can fix (bad paths, bad files, bad options).

It is a plain Exception, so the library modules that raise it do not depend on click; the commands map it to
click's one-line error (see commands.py), which is the only place that knows how it is shown.
"""


class UserError(Exception):
    """A problem the user can fix, shown as one `Error: <message>` line with exit status 1, never as a traceback.

    The message names the file or option and the problem.
    """

    exit_code = 1  # the status a command exits with when it fails with this error

    def __init__(self, message: str) -> None:
        super().__init__(message)

    @property
    def message(self) -> str:
        return self.args[0]

    def __str__(self) -> str:
        return self.message
