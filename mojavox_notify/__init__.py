"""MOJAVOX Notify: the real-time notification backend of MOJAVOX."""

from .escalations import ResolveEscalation
from .hookspecs import hookimpl
from .model import Event, NotificationType

__version__ = "0.3.0"
__all__ = ["Event", "NotificationType", "ResolveEscalation", "hookimpl", "__version__"]
