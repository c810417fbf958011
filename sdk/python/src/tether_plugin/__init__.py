"""tether-plugin: write a tether bus plugin in Python.

A plugin subclasses :class:`Plugin` and hands an instance to :func:`run`, which talks to the
plugin's bus sidecar (``SIDECAR_ADDR``, default ``127.0.0.1:9191``) until it is stopped::

    import tether_plugin as tp

    class Signals(tp.Plugin):
        subscriptions = [tp.Subscription("orders.*", group=None)]

        def on_message(self, bus, msg):
            bus.publish("signals." + msg.topic.split(".", 1)[1], msg.data)

    tp.run(Signals())

Returning from :meth:`Plugin.on_message` acks the message, raising nacks it (:class:`Nack` to
choose the delay). :meth:`Bus.publish` blocks until the message is durable and raises a
:class:`BusError` subclass when it is refused.
"""

from ._api import Message, Nack, Plugin, Subscription
from ._errors import (
    BusError,
    ConnectTimeout,
    InvalidArgument,
    PermissionDenied,
    PublishTimeout,
    ResourceExhausted,
    SessionClosed,
    SessionRefused,
    Unavailable,
)
from ._runtime import Bus, run
from ._version import __version__

__all__ = [
    "Bus",
    "BusError",
    "ConnectTimeout",
    "InvalidArgument",
    "Message",
    "Nack",
    "PermissionDenied",
    "Plugin",
    "PublishTimeout",
    "ResourceExhausted",
    "SessionClosed",
    "SessionRefused",
    "Subscription",
    "Unavailable",
    "__version__",
    "run",
]
