import socket
import sys
import threading
from pathlib import Path
from typing import Any, Callable, List, Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tether_plugin as tp  # noqa: E402
from fake_sidecar import WAIT, FakeSidecar  # noqa: E402


@pytest.fixture
def sidecar():
    fake = FakeSidecar()
    yield fake
    fake.close()


def free_port() -> int:
    """A port nothing listens on (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Probe(tp.Plugin):
    """A plugin that records its calls; behaviour comes from the callables given."""

    subscriptions = [tp.Subscription("orders.*", group=None)]

    def __init__(self, on_start: Optional[Callable[[tp.Bus], None]] = None,
                 on_message: Optional[Callable[[tp.Bus, tp.Message], None]] = None,
                 health: Optional[Callable[[], bool]] = None) -> None:
        self._on_start = on_start
        self._on_message = on_message
        self._health = health
        self.calls: List[Any] = []
        self.messages: List[tp.Message] = []
        self.bus: Optional[tp.Bus] = None
        self.started = threading.Event()
        self.stopped = threading.Event()

    def on_start(self, bus: tp.Bus) -> None:
        self.bus = bus
        if self._on_start:
            self._on_start(bus)
        self.calls.append("start")
        self.started.set()

    def on_message(self, bus: tp.Bus, msg: tp.Message) -> None:
        self.calls.append(f"message {msg.delivery_id}")
        self.messages.append(msg)
        if self._on_message:
            self._on_message(bus, msg)

    def on_health_check(self) -> bool:
        self.calls.append("health")
        return self._health() if self._health else True

    def on_stop(self) -> None:
        self.calls.append("stop")
        self.stopped.set()


class Running:
    """``tp.run`` on a thread of its own, with a stop event."""

    def __init__(self, plugin: tp.Plugin, addr: Optional[str] = None, **kw: Any) -> None:
        self.stop = threading.Event()
        self.error: Optional[BaseException] = None
        self.returned = False

        def target() -> None:
            try:
                tp.run(plugin, addr=addr, stop=self.stop, **kw)
                self.returned = True
            except BaseException as e:  # handed to the test by join()
                self.error = e

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def join(self) -> Optional[BaseException]:
        """Waits for run to end; its exception, or None when it returned."""
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), f"tp.run did not end within {WAIT} s"
        return self.error


def wait(event: threading.Event, what: str) -> None:
    assert event.wait(WAIT), f"{what} did not happen within {WAIT} s"
