"""HTTP to an address from the inventory (a notification webhook, Patroni's REST API):
redirects are never followed, so a URL cannot send connfix, or what it sends, somewhere
the inventory does not name. A 3xx answer is raised as urllib's HTTPError, for the caller
to say."""

from __future__ import annotations

import functools
import urllib.request
from typing import Any


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urlopen raises HTTPError with the 3xx


@functools.cache
def opener() -> urllib.request.OpenerDirector:
    """A urllib opener that follows no redirect."""
    return urllib.request.build_opener(_NoRedirect)
