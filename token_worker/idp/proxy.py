"""Which proxy an IdP call goes through, as ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``
and ``NO_PROXY`` say (upper or lower case; lower case wins, as curl and requests read them).

The environment is read once, when the IdP client is built, by the standard library
(``urllib.request.getproxies_environment``, ``proxy_bypass_environment``). A call to an
``https`` URL uses ``HTTPS_PROXY`` (a CONNECT tunnel: TLS, the server's certificate check
and any client certificate go end to end), one to ``http`` uses ``HTTP_PROXY``; either
falls back to ``ALL_PROXY``. ``NO_PROXY`` names hosts reached directly: ``idp.example``
(and its subdomains), ``.example``, ``127.0.0.1``, ``::1``, ``*`` for all (CIDR ranges
are not understood, as by the standard library and curl before 7.86).

Credentials in a proxy URL (``http://user:pass@proxy:3128``) are taken out of it: urllib3
would ignore them. They go to the proxy as ``Proxy-Authorization: Basic`` and nowhere else;
:attr:`ProxyRoute.url` and :attr:`ProxyRoute.shown`, the only forms of the route a log line
or an error names, never hold them, and :attr:`ProxyRoute.hidden` lists the values a text
must be scrubbed of.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from urllib3.util import make_headers

from token_worker.errors import ConfigError

__all__ = ["Proxies", "ProxyRoute"]

SCHEMES = ("http", "https")
"""Proxy URL schemes urllib3 speaks without extra packages (no SOCKS)."""


@dataclass(frozen=True)
class ProxyRoute:
    """One proxy: its URL without credentials, and the header that carries them."""

    url: str
    """``http://proxy:3128``: what urllib3 connects to, and what may be logged."""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    """``Proxy-Authorization`` when the URL had credentials (never shown)."""
    hidden: tuple[str, ...] = field(default=(), repr=False, compare=False)
    """The password and the header's value: what a text must be scrubbed of."""

    @property
    def shown(self) -> str:
        """The route as a log line names it."""
        return self.url + (" (with credentials)" if self.headers else "")


class Proxies:
    """The proxy settings of the environment, read once; :meth:`route` per URL."""

    def __init__(self, proxies: Mapping[str, str]) -> None:
        """``proxies`` as ``getproxies_environment`` returns them (``https``, ``http``,
        ``all``, and ``no`` for NO_PROXY); an unusable entry raises
        :class:`~token_worker.errors.ConfigError` naming the variable, never its
        credentials (the start fails, exit 2)."""
        self._raw = {key: value for key, value in proxies.items() if value}
        self._routes: dict[str, ProxyRoute] = {
            scheme: _route(self._raw[scheme], scheme)
            for scheme in ("https", "http", "all") if scheme in self._raw}

    @classmethod
    def from_environment(cls) -> Proxies:
        """Read the process's proxy variables now (``getproxies_environment``: upper or
        lower case, lower case winning; an empty lower-case one unsets the other)."""
        return cls(urllib.request.getproxies_environment())

    def __bool__(self) -> bool:
        return bool(self._routes)

    def route(self, url: str) -> ProxyRoute | None:
        """The proxy for ``url``, or None to connect directly (no proxy for its scheme,
        or ``NO_PROXY`` names its host)."""
        if not self._routes:
            return None
        parts = urlsplit(url)
        route = self._routes.get(parts.scheme) or self._routes.get("all")
        if route is None:
            return None
        host = parts.hostname or ""
        if self._bypass(host, parts.port):
            return None
        return route

    def _bypass(self, host: str, port: int | None) -> bool:
        """Whether ``NO_PROXY`` names ``host``: as a name or suffix (``idp.example``,
        ``.example``), an address (``::1``, ``[::1]``), or with the port
        (``idp.example:8443``, ``[::1]:8443``)."""
        no_proxy = self._raw.get("no", "")
        if not no_proxy:
            return False
        bracketed = f"[{host}]" if ":" in host else host
        forms = {host, bracketed} | ({f"{bracketed}:{port}"} if port is not None else set())
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        return any(bypass(form, {"no": no_proxy}) for form in forms)

    def __repr__(self) -> str:
        routes = ", ".join(f"{scheme}={route.shown}" for scheme, route in self._routes.items())
        bypass = self._raw.get("no")
        return f"Proxies({routes or 'none'}{f', no_proxy={bypass!r}' if bypass else ''})"


def _route(raw: str, scheme: str) -> ProxyRoute:
    """A :class:`ProxyRoute` from a proxy variable's value (``host:port`` is
    ``http://host:port``, as curl reads it)."""
    name = f"{scheme.upper()}_PROXY"
    source = f"env {name} or {name.lower()}"
    value = raw.strip()
    if "://" not in value:
        value = "http://" + value
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ConfigError(name, source, "not a valid proxy URL (a bad port or bracket?)"
                          ) from None
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise ConfigError(name, source, "must be an http:// or https:// proxy URL with a "
                          f"host (got scheme {parts.scheme!r})")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host + (f":{port}" if port else "")
    url = urlunsplit((parts.scheme, netloc, "", "", ""))
    if parts.username is None and parts.password is None:
        return ProxyRoute(url)
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    headers = make_headers(proxy_basic_auth=f"{user}:{password}")
    hidden = tuple(value for value in (password, headers["proxy-authorization"],
                                       headers["proxy-authorization"].split(" ", 1)[1])
                   if value)
    return ProxyRoute(url, dict(headers), hidden)
