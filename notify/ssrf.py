"""The guard against server-side request forgery for outbound notification URLs.

A subscriber chooses the URL trackd will POST to, so before every request the host is resolved and
each address checked: private, loopback, link-local, carrier-grade NAT, multicast, reserved,
unspecified and IPv4-mapped addresses are refused unless private destinations are allowed (for
a receiver on the same host or network). Cloud metadata endpoints (`METADATA_ADDRESSES`, some of
them public addresses such as Azure's 168.63.129.16, and `METADATA_HOSTS`) are refused always,
also when embedded in an IPv6 address: nothing legitimate listens there for webhooks and they hand
out credentials.

The caller connects to the address that was checked (`Target`), never resolving the name again,
so a DNS answer that changes between the check and the connection cannot slip through. The
resolver is injected, so the rules are tested with no network at all.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from trackd.errors import ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str], Awaitable[list[str]]]

METADATA_HOSTS = frozenset(
    {
        "metadata.google.internal",
        "metadata.goog",
        "metadata",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.internal",
        "metadata.tencentyun.com",
        "api.metadata.cloud.ibm.com",
        "metadata.platformequinix.com",
    }
)
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure IMDS, OpenStack, Oracle, DigitalOcean, Hetzner, IBM, Huawei
        "169.254.170.2",  # AWS ECS task metadata and credentials
        "169.254.170.23",  # AWS EKS Pod Identity credentials
        "169.254.169.253",  # AWS DNS
        "169.254.0.23",  # Tencent Cloud
        "168.63.129.16",  # Azure WireServer and host agent (a public address, so named here)
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (classic)
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::253",  # AWS DNS over IPv6
        "fd00:ec2::23",  # AWS EKS Pod Identity over IPv6
        "fd20:ce::254",  # GCP metadata over IPv6
        "fd00:c1::a9fe:a9fe",  # Oracle Cloud IMDS over IPv6
    )
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # local-use NAT64 prefixes (RFC 8215)
_V4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible addresses (::a.b.c.d)


class Refused(ValidationError):
    """A destination trackd will not send to; `reason` says why (shown in the delivery log)."""

    def __init__(self, reason: str) -> None:
        super().__init__("url", reason)


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect: the URL with the checked address in place of the host name.

    Send `host` as the Host header and, for https, `sni_hostname` as the TLS server name, so
    virtual hosting and certificate checks still see the name the subscriber gave.
    """

    url: str
    host: str
    sni_hostname: str
    address: str


def refusal(addr: IPAddress, allow_private: bool = False) -> str | None:
    """Why `addr` is not an acceptable destination, or None when it is."""
    if addr in METADATA_ADDRESSES:
        return f"{addr} is a cloud metadata address"
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped
        if mapped is not None:
            if mapped in METADATA_ADDRESSES:
                return f"{addr} is a cloud metadata address"
            return None if allow_private else f"{addr} is an IPv4-mapped address"
        embedded = addr.sixtofour or (addr.teredo[1] if addr.teredo else None)
        if embedded is None and (addr in _NAT64 or addr in _NAT64_LOCAL or (addr in _V4_COMPATIBLE and int(addr) > 1)):
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is not None:
            inner = refusal(embedded, allow_private)
            if inner is not None:
                return f"{addr} embeds an address that is refused ({inner})"
    if allow_private:
        return None
    checks = (
        (addr.is_unspecified, "an unspecified address"),
        (addr.is_loopback, "a loopback address"),
        (addr.is_link_local, "a link-local address"),
        (addr.is_multicast, "a multicast address"),
        (isinstance(addr, ipaddress.IPv4Address) and addr in _CGNAT, "a carrier-grade NAT address"),
        (addr.is_private, "a private address"),
        (addr.is_reserved, "a reserved address"),
        (not addr.is_global, "not a public address"),
    )
    for hit, what in checks:
        if hit:
            return f"{addr} is {what}"
    return None


def _host_of(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, or Refused naming what is wrong."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise Refused("must be an http or https URL")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise Refused("has no host")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)


async def system_resolver(host: str) -> list[str]:
    """The addresses the operating system resolves `host` to."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(f"host {host!r} does not resolve ({exc})") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def resolve(host: str, allow_private: bool, resolver: Resolver = system_resolver) -> list[IPAddress]:
    """Every address of `host`, or Refused if any of them (or the name itself) is refused.

    Refusing when any address is bad, not just the first, keeps a name that resolves to both a
    public and a private address from being used to reach the private one.
    """
    if host in METADATA_HOSTS or host.endswith(".metadata.google.internal"):
        raise Refused(f"refused: host {host!r} is a cloud metadata endpoint")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        names = await resolver(host)
        try:
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in names]
        except ValueError as exc:
            raise Refused(f"host {host!r} resolved to something that is not an address ({exc})") from None
    if not addresses:
        raise Refused(f"host {host!r} does not resolve")
    for addr in addresses:
        reason = refusal(addr, allow_private)
        if reason is not None:
            shown = f"{host} resolves to {reason}" if literal is None else reason
            raise Refused(f"refused: {shown}; private, loopback, link-local and metadata destinations are not allowed")
    return addresses


async def check_url(url: str, allow_private: bool, resolver: Resolver = system_resolver) -> Target:
    """Check `url` and pin it to its first acceptable address (see `Target`)."""
    scheme, host, port = _host_of(url)
    addresses = await resolve(host, allow_private, resolver)
    addr = addresses[0]
    parts = urlsplit(url)
    shown = f"[{addr}]" if isinstance(addr, ipaddress.IPv6Address) else str(addr)
    default_port = port == (443 if scheme == "https" else 80)
    netloc = shown if default_port and parts.port is None else f"{shown}:{port}"
    userinfo, _, host_header = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@{netloc}" if userinfo else netloc
    pinned = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
    return Target(url=pinned, host=host_header, sni_hostname=host, address=str(addr))
