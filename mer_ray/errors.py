"""The one exception type that means "the user's input is wrong".

The CLI turns it into a one-line message and exit code 2, never a traceback. Raise it at
the boundary with what was wrong, where (file, sample, field) and how to fix it.
"""


class InputError(Exception):
    """Bad user input: message names the file/sample/field and the fix."""
