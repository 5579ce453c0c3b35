"""Mamori: a monitoring and alerting agent for a Postgres-backed web service."""

import os

__version__ = "0.1.0"

# aiohttp (the endpoint, the notifiers) loads frozenlist only as the base class of its client's
# tracing signals, lists frozen once at start-up. The compiled frozenlist module costs 1 MB of
# RSS, a fifth of what is left of the default config's 50 MB budget (issue 12; bench/rss.py);
# frozenlist's documented switch selects its pure-Python twin, which behaves the same. Set before
# anything imports aiohttp; an operator's own setting wins.
os.environ.setdefault("FROZENLIST_NO_EXTENSIONS", "1")
