"""The exceptions that mean "tell the user in one line", never with a traceback.

- `InputError`: the user's input is wrong (exit code 2). Raise it at the boundary with
  what was wrong, where (file, sample, field) and how to fix it.
- `StorageError`: the machine stopped us (a full or read-only disk, unreachable
  storage; exit code 1). Nothing finished is lost: the message says what to do, which
  is usually "free space and run the same command again to resume".
- `RunStopped`: a distributed run could not go on (a node lost and no capacity left for
  its workers within the wait; exit code 1). Every saved member is kept and the message
  names what is left and how to resume.
"""


class InputError(Exception):
    """Bad user input: message names the file/sample/field and the fix.

    `param`: the parameter whose value was wrong. The message then starts with it, named
    as its caller calls it: the Python parameter by default (`scale 2.0: expected a
    fraction in (0, 1]`), the flag where the command line names it through `named`
    (`--scale 2.0: ...`). So each rule is written once, in the library."""

    exit_code = 2

    def __init__(self, message: str = "", param: str | None = None):
        self.param, self.detail = param, message
        super().__init__(self.named())

    def named(self, names: dict | None = None) -> str:
        """The message with `param` named as `names` (parameter -> name) says."""
        if self.param is None:
            return self.detail
        name = (names or {}).get(self.param, self.param)
        return name + ("" if self.detail.startswith(":") else " ") + self.detail


class StorageError(Exception):
    """Writing or reading storage failed for a reason outside the user's input."""

    exit_code = 1


class RunStopped(Exception):
    """Training stopped for a reason outside the user's input; the run resumes."""

    exit_code = 1
