"""The one error of a shared store (Redis, PostgreSQL) that cannot answer now.

The caller retries: the API answers 503 with Retry-After, announce and scrape a bencoded failure. The
message never carries the store's URL or credentials.
"""


class StoreUnavailable(Exception):
    """A shared store is down, slow or answered nonsense; nothing was changed by the failed call."""
