"""Who may talk to `phiforge serve`: the Host names it answers to, the one web origin it trusts, its API key.

The danger for a server on loopback is the user's own browser, which sends requests for any page it shows. With
DNS rebinding a page at evil.example points evil.example at 127.0.0.1 and then talks to the server as its own
origin: only the Host header still says evil.example, so a Host that is not the server's address is refused.
Without rebinding, a page's cross-site request carries an Origin that is not the server's, so it is refused too.
curl and the OpenAI clients send the right Host and no Origin, and are unaffected. An API key, when set, is asked
of every /v1 request; the web page (which holds no secret) and /health (for probes) need none.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
# A Host header: a name or IPv4 address, or a bracketed IPv6 address, then an optional port.
_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::[0-9]{1,5})?")


def openai_error(status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None) -> JSONResponse:
    """An error in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, so clients show the message."""
    body = {"message": message, "type": type, "param": param, "code": code}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def host_name(value: str) -> str | None:
    """The host part of a Host header ("[::1]:8000" -> "::1", "LocalHost." -> "localhost"); None if malformed."""
    found = _HOST.fullmatch(value.strip().lower())
    if found is None:
        return None
    return found["v6"] or found["name"].rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    hosts: frozenset[str] = LOOPBACK  # the Host names (lower case, no port) the server answers to
    any_ip: bool = False  # listening on every interface: any IP address as Host (rebinding needs a name)
    api_key: str | None = None

    @classmethod
    def listening(cls, host: str, bound: str, allow_hosts=(), api_key: str | None = None) -> Access:
        """For a server started with --host `host` whose socket is bound to the IP address `bound`."""
        ip = ipaddress.ip_address(bound)
        names = {host.lower().rstrip("."), bound.lower(), *(h.lower().rstrip(".") for h in allow_hosts)}
        if ip.is_loopback or ip.is_unspecified:  # 0.0.0.0 and :: include loopback
            names |= LOOPBACK
        return cls(frozenset(names - {""}), ip.is_unspecified, api_key)

    def allows_host(self, name: str | None) -> bool:
        return name is not None and (name in self.hosts or self.any_ip and _is_ip(name))

    def key_matches(self, authorization: str) -> bool:
        scheme, _, token = authorization.strip().partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else ""
        # Digests, compared in constant time: the timing tells neither the key's bytes nor its length.
        return hmac.compare_digest(hashlib.sha256(given.encode("latin-1")).digest(),
                                   hashlib.sha256(self.api_key.encode()).digest())

    def refusal(self, headers: Headers, path: str) -> JSONResponse | None:
        """The error answer for a request that may not reach the server, or None."""
        host = headers.get("host")
        # A request without Host (HTTP/1.0) cannot come from a browser, which always sends one.
        if host is not None and not self.allows_host(host_name(host)):
            return openai_error(403, f"Host {host!r} is not an address of this server ({', '.join(sorted(self.hosts))})"
                                     "; a name that reaches it through DNS or a proxy must be allowed with "
                                     "--allow-host NAME", code="host_not_allowed")
        origin = headers.get("origin")
        if origin is not None:
            scheme, sep, authority = origin.lower().partition("://")
            if not (sep and scheme in ("http", "https") and host is not None and authority == host.lower()):
                return openai_error(403, f"Origin {origin!r} is not this server's own; requests from other web "
                                         "pages are refused", code="origin_not_allowed")
        if self.api_key is not None and (path == "/v1" or path.startswith("/v1/")):
            authorization = headers.get("authorization")
            if authorization is None or not self.key_matches(authorization):
                what = "missing API key: send 'Authorization: Bearer KEY'" if authorization is None \
                    else "incorrect API key"
                return openai_error(401, f"{what} (this server was started with an API key)",
                                    code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return None


class Guard:
    """ASGI middleware: answers the requests that `Access` refuses before any route sees them."""

    def __init__(self, app, access: Access):
        self.app, self.access = app, access

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (refused := self.access.refusal(Headers(scope=scope), scope["path"])):
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)
