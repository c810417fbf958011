"""oms: the Python side of the bus demo (examples/bus-demo/tether.yaml).

An order system in a few lines: every OMS_INTERVAL seconds (default 1) it publishes an order on
``orders.<kind>`` (created, paid, shipped, in turn), and it prints every signal it receives on
``signals.>``. The Rust signals plugin, beside the other sidecar, turns each order into a signal,
so each order comes back as a signal naming it:

    sent order 1 on orders.created #1: 3 x widget
    got signals.created #1 for order 1 (orders.created #1): 3 x widget

It talks only to its bus sidecar (SIDECAR_ADDR) through the Python SDK, tether_plugin.
SIGTERM or SIGINT, or the sidecar's Stop, ends it cleanly: exit 0.
"""

import json
import os
import sys
import threading

import tether_plugin as tp

KINDS = ("created", "paid", "shipped")
ITEMS = ("widget", "gadget", "gizmo", "sprocket")


def say(line: str) -> None:
    print(line, flush=True)


class Oms(tp.Plugin):
    subscriptions = [tp.Subscription("signals.>")]

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.stopping = threading.Event()
        self.sender = None

    def on_start(self, bus: tp.Bus) -> None:
        grants = ", ".join(f"{action} {topic}" for topic, action in bus.granted)
        say(f"started as {bus.instance_id} (granted: {grants})")
        self.sender = threading.Thread(target=self.send_orders, args=(bus,), daemon=True)
        self.sender.start()

    def send_orders(self, bus: tp.Bus) -> None:
        number = 0
        while not self.stopping.is_set():
            number += 1
            kind = KINDS[(number - 1) % len(KINDS)]
            order = {"order": number, "item": ITEMS[(number - 1) % len(ITEMS)],
                     "qty": number % 5 + 1}
            topic = f"orders.{kind}"
            try:
                # The key makes a publish resent after a reconnect count once.
                sequence = bus.publish(topic, json.dumps(order).encode(),
                                       idempotency_key=f"order-{number}")
            except tp.BusError as e:
                if not self.stopping.is_set():
                    say(f"order {number} on {topic} not sent: {e}")
                return
            say(f"sent order {number} on {topic} #{sequence}: {order['qty']} x {order['item']}")
            self.stopping.wait(self.interval)

    def on_message(self, bus: tp.Bus, msg: tp.Message) -> None:
        order = json.loads(msg.data)
        headers = msg.headers
        source = f"{headers.get('source-topic', '?')} #{headers.get('source-sequence', '?')}"
        again = f" (delivered {msg.redelivered} times before)" if msg.redelivered else ""
        say(f"got {msg.topic} #{msg.sequence} for order {order['order']} ({source}): "
            f"{order['qty']} x {order['item']}{again}")

    def on_stop(self) -> None:
        say("stopping: no more orders")
        self.stopping.set()
        if self.sender is not None:
            self.sender.join(10)


def main() -> int:
    interval = float(os.environ.get("OMS_INTERVAL") or 1)
    try:
        tp.run(Oms(interval))
    except tp.BusError as e:
        say(f"error: {e}")
        return 1
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
