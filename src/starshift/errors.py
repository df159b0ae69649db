"""The one exception type a user can cause; the CLI turns it into one line and exit code 2."""


class StarshiftError(Exception):
    """An error caused by the user's input or configuration (bad path, corrupt FITS, wrong key).

    The message is a single line naming the file or key and what to do about it.
    """
