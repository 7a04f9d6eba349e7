"""Helpers for the test suite, one concern per module; the fixtures that use them are in
`tests/conftest.py`.

The names a plugin's test needs (docs/plugins.md, "Testing a plugin") are importable from the
package itself, `from .support import Socket, new_user, notifications_of, post_event, token`;
the suite's own tests import from the module that defines each name.
"""

from .api import notifications_of, post_event
from .sockets import Socket
from .tokens import new_user, token

__all__ = ["Socket", "new_user", "notifications_of", "post_event", "token"]
