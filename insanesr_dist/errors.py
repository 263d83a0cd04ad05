"""The one exception type the toolkit raises for problems a user can fix (bad paths, bad files, bad options)."""

import click


class UserError(click.ClickException):
    """Printed by click as one `Error: ...` line with exit status 1, never as a traceback.

    The message names the file or option and the problem.
    """
