"""Which NATS servers a connection tries, and in which order.

The list starts as configured (``nats.url``) and grows with the servers a cluster
announces in its INFO ``connect_urls``. As in nats.go, each server tried goes to the end
of the list, so a lost server is tried last; unless ``nats.noRandomize`` is set, the list
is shuffled before every round, so a fleet given the same list spreads over the nodes
instead of all landing on the first.
"""

from __future__ import annotations

import random

__all__ = ["ServerPool"]


class ServerPool:
    """The servers to try, in the order of the next round (``randomize``: shuffled before
    every round, the server used last still last)."""

    def __init__(self, urls: tuple[str, ...], *, randomize: bool,
                 rng: random.Random | None = None) -> None:
        self._urls = list(urls)
        self._randomize = randomize
        self._rng = rng or random.Random()  # noqa: S311 - load spreading, not secrecy
        self._last = ""

    @property
    def urls(self) -> list[str]:
        """Every known server, in the current order."""
        return list(self._urls)

    def round(self) -> list[str]:
        """The order for the next connect round (the server used last comes last)."""
        if self._randomize:
            self._rng.shuffle(self._urls)
            if self._last in self._urls and len(self._urls) > 1:
                self._urls.remove(self._last)
                self._urls.append(self._last)
        return list(self._urls)

    def tried(self, url: str) -> None:
        """``url`` is being tried: it goes to the end of the list."""
        self._last = url
        if url in self._urls:
            self._urls.remove(url)
            self._urls.append(url)

    def add(self, url: str) -> bool:
        """Remember a server learned from INFO; True if it was new."""
        if url in self._urls:
            return False
        self._urls.append(url)
        return True

    def learn(self, connect_urls: object, current_url: str) -> list[str]:
        """Add the servers an INFO announces (``host:port`` entries take the scheme of
        ``current_url``); returns those that were new. Anything that is not a list of
        non-empty strings is ignored, entry by entry: an INFO is the server's word."""
        if not isinstance(connect_urls, list | tuple):
            return []
        scheme = current_url.split("://", 1)[0] if "://" in current_url else "nats"
        learned = []
        for address in connect_urls:
            if not isinstance(address, str) or not address:
                continue
            url = address if "://" in address else f"{scheme}://{address}"
            if self.add(url):
                learned.append(url)
        return learned
