"""Mamori: a monitoring and alerting agent for a Postgres-backed web service."""

__version__ = "0.1.0"
