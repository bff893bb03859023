"""Deployment beyond simulation: Flower server and site apps (``flower``), TLS and keys (``certificates``)."""
