"""The one error type a person can act on. Every area raises a subclass of it with a message that
says what to fix; the CLI prints it without a traceback. It lives in the core (not the CLI) so
that nothing in the core depends on the command line."""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""
