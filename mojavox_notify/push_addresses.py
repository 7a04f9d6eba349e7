"""Where a push may be sent: an https endpoint on a public address, and only there.

A subscription's endpoint comes from a browser, so it is untrusted: the server must not be made
to call a loopback, private or cloud-metadata address through it. `check_endpoint` refuses such
an endpoint when it is registered (a helpful 400). The refusal that counts is `PublicResolver`'s,
the resolver of the push HTTP client: tornado connects to exactly the addresses it answers, so
a host whose DNS answer changes after the check (DNS rebinding) is refused at connect time.
Hosts in `push.allowed_insecure_hosts` are exempt (a local push service stand-in).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Iterable
from urllib.parse import urlparse

from tornado.netutil import DefaultLoopResolver, Resolver

from .errors import ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address in the last 32 bits
LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: a site's own translators
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated (RFC 4291), never a push service


def is_public(address: IPAddress) -> bool:
    """Whether a connection to `address` reaches the public internet. An IPv6 address that
    carries an IPv4 one (NAT64, IPv4-mapped, 6to4, Teredo) is judged by what it carries:
    64:ff9b::7f00:1 reaches 127.0.0.1 through a NAT64 gateway."""
    if address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return address.is_global
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return all(is_public(inner) for inner in embedded)
    if address in LOCAL_NAT64 or address in IPV4_COMPATIBLE:
        return False
    return address.is_global


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...] | None:
    """The IPv4 addresses a packet to `address` ends up at, or None when it carries none."""
    if address.ipv4_mapped is not None:
        return (address.ipv4_mapped,)
    if address in NAT64:
        return (ipaddress.IPv4Address(int(address) & 0xFFFFFFFF),)
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if address.teredo is not None:
        return address.teredo  # (server, client): the relay and the host behind it
    return None


def check_url(endpoint: str, allowed_insecure_hosts: Iterable[str]) -> None:
    """An https URL, or http to an allowed insecure host; no lookup."""
    parsed = urlparse(endpoint)
    allowed = _is_allowed(parsed.hostname or "", allowed_insecure_hosts)
    if parsed.scheme != "https" and not (allowed and parsed.scheme == "http"):
        raise ValidationError("endpoint", "must be an https URL of the browser's push service")


async def check_endpoint(endpoint: str, allowed_insecure_hosts: Iterable[str],
                         resolver: Resolver) -> None:
    """Refuse an endpoint that is not https or whose host resolves to a non-public address,
    when a browser registers it. A host that does not resolve now is accepted: every send
    resolves it again through `PublicResolver`, which never connects to a non-public one."""
    check_url(endpoint, allowed_insecure_hosts)
    parsed = urlparse(endpoint)
    host = (parsed.hostname or "").lower()
    if _is_allowed(host, allowed_insecure_hosts):
        return
    try:
        addresses = await resolver.resolve(host, parsed.port or 443)
    except OSError:
        return
    refused = _first_refused(addresses)
    if refused is not None:
        raise ValidationError("endpoint", f"host {host} resolves to a non-public address "
                                          f"({refused}); push services are public hosts")


class AddressRefused(Exception):
    """A push endpoint's host resolved to a non-public address at connect time."""

    def __init__(self, host: str, address: str):
        super().__init__(f"host {host} resolves to a non-public address ({address}); not connected")


class PublicResolver(Resolver):
    """The push HTTP client's resolver: resolves once per connection through `resolver` and
    hands tornado the answer only when every address in it is public (`AddressRefused`
    otherwise), so the addresses checked are the addresses connected to."""

    def initialize(self, allowed_insecure_hosts: Iterable[str] = (),
                   resolver: Resolver | None = None) -> None:
        self._allowed = tuple(allowed_insecure_hosts)
        self._resolver = resolver or DefaultLoopResolver()

    async def resolve(self, host: str, port: int,
                      family: socket.AddressFamily = socket.AF_UNSPEC) -> list[tuple[int, Any]]:
        addresses = await self._resolver.resolve(host, port, family)
        if _is_allowed(host, self._allowed):
            return addresses
        refused = _first_refused(addresses)
        if refused is not None:
            raise AddressRefused(host, refused)
        return addresses


def _is_allowed(host: str, allowed_insecure_hosts: Iterable[str]) -> bool:
    return host.lower() in {name.lower() for name in allowed_insecure_hosts}


def _first_refused(addresses: list[tuple[int, Any]]) -> str | None:
    """The first non-public address of a resolver's answer, or None."""
    for _, sockaddr in addresses:
        if not is_public(ipaddress.ip_address(sockaddr[0])):
            return sockaddr[0]
    return None
