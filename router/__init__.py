"""A Consul-driven dynamic HTTP router, a drop-in for fabio."""

__version__ = "0.1.0"
