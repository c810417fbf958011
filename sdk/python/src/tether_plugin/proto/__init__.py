"""Generated code for the protocol ``tether.bus.v1`` (``bus_pb2``, ``bus_pb2_grpc``).

Made by ``sdk/python/scripts/generate`` from ``crates/bus-proto/proto/tether/bus/v1/bus.proto``;
do not edit the generated files. The SDK's own API (``tether_plugin``) does not expose these
types; they are here for the SDK itself and for tests that play the sidecar.
"""
