"""A sidecar played by the tests: grpcio's server on 127.0.0.1:0 serving PluginService.

Each Session call becomes a FakeSession that the test drives by hand: it reads what the plugin
sent (``recv``) and sends what a sidecar would (``welcome``, ``deliver``, ``stop``, ...), or ends
the call with a status (``end``).
"""

import queue
import threading
from concurrent import futures
from typing import Optional

import grpc

from tether_plugin.proto import bus_pb2 as pb
from tether_plugin.proto import bus_pb2_grpc as pb_grpc

# A bound on every wait, so a broken SDK fails a test instead of hanging it; never a measure.
WAIT = 20.0

HALF_CLOSED = "half-closed"  # what recv returns once the plugin closed its side


class _End:
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details


class FakeSession:
    def __init__(self, context: grpc.ServicerContext) -> None:
        self.metadata = dict(context.invocation_metadata())
        self.incoming: "queue.Queue[object]" = queue.Queue()
        self.outgoing: "queue.Queue[object]" = queue.Queue()
        # Cleared, the fake reads nothing more from the plugin (after the read under way), so
        # that HTTP/2 flow control holds the plugin's messages back.
        self.reading = threading.Event()
        self.reading.set()

    # what the plugin sent
    def recv(self, timeout: float = WAIT):
        try:
            return self.incoming.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the plugin sent nothing within {timeout} s") from None

    def recv_kind(self, kind: str):
        """The next message, which must be of ``kind`` (hello, publish, ack, nack, health)."""
        msg = self.recv()
        assert msg != HALF_CLOSED, f"expected {kind}, the plugin half-closed"
        assert msg.WhichOneof("kind") == kind, f"expected {kind}, got {msg}"
        return getattr(msg, kind)

    def expect_half_close(self) -> None:
        msg = self.recv()
        assert msg == HALF_CLOSED, f"expected the half-close, got {msg}"

    # what a sidecar sends
    def send(self, **kind) -> None:
        self.outgoing.put(pb.SidecarMessage(**kind))

    def welcome(self, instance_id: str = "test-1") -> None:
        self.send(welcome=pb.Welcome(protocol_major=1, instance_id=instance_id, granted=[
            pb.Grant(topic="signals.>", action=pb.ACTION_PUBLISH),
            pb.Grant(topic="orders.*", action=pb.ACTION_SUBSCRIBE)]))

    def health_check(self, check_id: int) -> None:
        self.send(health_check=pb.HealthCheck(id=check_id))

    def deliver(self, delivery_id: str, topic: str = "orders.created", data: bytes = b"{}",
                headers: Optional[dict] = None, sequence: int = 1, redelivered: int = 0) -> None:
        self.send(delivery=pb.Delivery(
            delivery_id=delivery_id, topic=topic, data=data, headers=headers or {},
            sequence=sequence, redelivered=redelivered, subscription="orders.*"))

    def accept(self, request_id: int, sequence: int) -> None:
        self.send(publish_result=pb.PublishResult(
            request_id=request_id, accepted=pb.PublishAccepted(sequence=sequence)))

    def refuse(self, request_id: int, code: str, message: str) -> None:
        self.send(publish_result=pb.PublishResult(
            request_id=request_id, refused=pb.PublishRefused(code=code, message=message)))

    def stop(self, drain_timeout_ms: int = 0) -> None:
        self.send(stop=pb.Stop(drain_timeout_ms=drain_timeout_ms))

    def end(self, code: grpc.StatusCode = grpc.StatusCode.OK, details: str = "") -> None:
        """Ends the call with this status."""
        self.outgoing.put(_End(code, details))


class FakeSidecar(pb_grpc.PluginServiceServicer):
    def __init__(self, port: int = 0) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        pb_grpc.add_PluginServiceServicer_to_server(self, self.server)
        bound = self.server.add_insecure_port(f"127.0.0.1:{port}")
        assert bound, f"cannot listen on 127.0.0.1:{port}"
        self.addr = f"127.0.0.1:{bound}"
        self.port = bound
        self.sessions: "queue.Queue[FakeSession]" = queue.Queue()
        self.server.start()

    def next_session(self, timeout: float = WAIT) -> FakeSession:
        try:
            return self.sessions.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no Session call within {timeout} s") from None

    def close(self) -> None:
        self.server.stop(None).wait(WAIT)

    def Session(self, request_iterator, context):  # noqa: N802 (gRPC's name)
        session = FakeSession(context)
        # When the call ends for any reason, the loop below must not wait on.
        context.add_callback(lambda: session.outgoing.put(None))

        def read() -> None:
            try:
                for msg in request_iterator:
                    session.incoming.put(msg)
                    session.reading.wait()
            except Exception:  # the call was cancelled: nothing more comes
                return
            session.incoming.put(HALF_CLOSED)

        threading.Thread(target=read, daemon=True).start()
        self.sessions.put(session)
        while True:
            item = session.outgoing.get()
            if item is None:
                return
            if isinstance(item, _End):
                if item.code != grpc.StatusCode.OK:
                    context.set_code(item.code)
                    context.set_details(item.details)
                return
            yield item
