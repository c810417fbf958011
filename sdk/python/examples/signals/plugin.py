"""signals: an example tether plugin.

For every order event it is delivered (``orders.created``, ``orders.cancelled``, ...) it publishes
a signal on the matching ``signals.*`` topic (``signals.created``, ...) with the same payload,
and acks the order event once the signal is durable. If the publish is refused, the exception
nacks the order event and the bus delivers it again later.

Run it beside a bus sidecar (SIDECAR_ADDR, default 127.0.0.1:9191):

    python plugin.py
"""

import logging
import sys

import tether_plugin as tp

log = logging.getLogger("signals")


class Signals(tp.Plugin):
    subscriptions = [tp.Subscription("orders.*", group=None)]

    def on_start(self, bus: tp.Bus) -> None:
        log.info("started as %s", bus.instance_id)

    def on_message(self, bus: tp.Bus, msg: tp.Message) -> None:
        event = msg.topic.split(".", 1)[1]  # orders.created -> created
        sequence = bus.publish(f"signals.{event}", msg.data, headers={
            "source-topic": msg.topic,
            "source-sequence": str(msg.sequence),
        })
        log.info("%s #%d -> signals.%s #%d", msg.topic, msg.sequence, event, sequence)

    def on_health_check(self) -> bool:
        return True

    def on_stop(self) -> None:
        log.info("stopping")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        tp.run(Signals())
    except tp.BusError as e:
        log.error("%s", e)
        return 1
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
