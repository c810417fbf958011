"""The SDK's version, also sent in Hello (``tether-plugin-python <version>``)."""

__version__ = "0.1.0"
