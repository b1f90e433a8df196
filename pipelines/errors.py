"""The one exception type users see: a clear message, exit code 2, no traceback."""


class TuneforgeError(Exception):
    """Bad input (recipe, data, model, run folder) that the user can fix.

    The message names the field, the value and the fix. The command line prints it without a traceback
    and exits with code 2. Several problems found together go into one error, one per line.
    """

    exit_code = 2
