"""`StackError`: the one-line failure of the whole stack (lab/stack.py) and of its parts' setup."""


class StackError(RuntimeError):
    """The stack could not start (one line: what failed and where its log is)."""
