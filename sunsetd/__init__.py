"""sunsetd: a process supervisor and ZeroMQ request router for fleets of AI agents on one host."""

__version__ = "0.1.0"
