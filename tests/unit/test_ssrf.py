"""The SSRF guard for webhook destinations: resolution only, through an injected resolver, no packets."""

from __future__ import annotations

import ipaddress

import pytest

from notify import ssrf


def resolver_for(table: dict[str, list[str]]) -> ssrf.Resolver:
    async def resolve(host: str) -> list[str]:
        if host not in table:
            raise ssrf.Refused(f"host {host!r} does not resolve")
        return table[host]

    return resolve


async def no_dns(host: str) -> list[str]:
    raise AssertionError(f"literal or refused-by-name host {host!r} must not be resolved")


REFUSED_LITERALS = [
    "10.0.0.1",
    "10.255.255.254",
    "172.16.0.1",
    "172.31.255.1",
    "192.168.1.10",
    "127.0.0.1",
    "127.8.9.10",
    "0.0.0.0",
    "100.64.0.1",
    "100.127.255.254",
    "169.254.1.1",
    "169.254.169.254",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",
    "ff02::1",
    "::ffff:10.0.0.1",
    "::ffff:93.184.216.34",
    "2002:a00:1::",  # 6to4 around 10.0.0.1
    "64:ff9b::a00:1",  # NAT64 around 10.0.0.1
]


@pytest.mark.parametrize("address", REFUSED_LITERALS)
async def test_private_and_special_literals_are_refused(address: str) -> None:
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(ssrf.Refused) as err:
        await ssrf.check_url(f"http://{host}:8080/hook", allow_private=False, resolver=no_dns)
    assert "refused" in err.value.reason
    assert ssrf.refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:2800:220:1:248:1893:25c8:1946"])
async def test_public_literals_are_allowed(address: str) -> None:
    host = f"[{address}]" if ":" in address else address
    target = await ssrf.check_url(f"https://{host}/hook", allow_private=False, resolver=no_dns)
    assert target.address == address
    assert ssrf.refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "host", ["metadata.google.internal", "METADATA.Google.Internal.", "metadata.goog", "instance-data", "metadata"]
)
async def test_metadata_hostnames_are_refused_even_when_private_is_allowed(host: str) -> None:
    public = resolver_for({host.lower().rstrip("."): ["93.184.216.34"]})
    for allow in (False, True):
        with pytest.raises(ssrf.Refused, match="metadata"):
            await ssrf.check_url(f"http://{host}/computeMetadata/v1/", allow_private=allow, resolver=public)


@pytest.mark.parametrize("address", ["169.254.169.254", "[fd00:ec2::254]", "[::ffff:169.254.169.254]"])
async def test_metadata_addresses_are_refused_even_when_private_is_allowed(address: str) -> None:
    with pytest.raises(ssrf.Refused, match="metadata"):
        await ssrf.check_url(f"http://{address}/latest/meta-data/", allow_private=True, resolver=no_dns)


async def test_names_are_judged_by_every_address_they_resolve_to() -> None:
    table = {
        "hooks.example.com": ["93.184.216.34"],
        "internal.example.com": ["10.1.2.3"],
        "mixed.example.com": ["93.184.216.34", "192.168.0.7"],
        "rebind.example.com": ["169.254.169.254"],
        "v6.example.com": ["::1"],
    }
    resolve = resolver_for(table)
    target = await ssrf.check_url("https://hooks.example.com/in", allow_private=False, resolver=resolve)
    assert target.address == "93.184.216.34"
    for host, why in [
        ("internal.example.com", "private"),
        ("mixed.example.com", "private"),
        ("rebind.example.com", "metadata"),
        ("v6.example.com", "loopback"),
    ]:
        with pytest.raises(ssrf.Refused, match=why) as err:
            await ssrf.check_url(f"https://{host}/in", allow_private=False, resolver=resolve)
        assert host in err.value.reason
    with pytest.raises(ssrf.Refused, match="does not resolve"):
        await ssrf.check_url("https://nowhere.invalid/", allow_private=False, resolver=resolve)


async def test_allow_private_lets_local_receivers_through() -> None:
    resolve = resolver_for({"localhost": ["127.0.0.1", "::1"]})
    for url in ("http://127.0.0.1:9000/", "http://10.0.0.8/x", "http://[::1]:80/", "http://localhost:9/"):
        assert (await ssrf.check_url(url, allow_private=True, resolver=resolve)).address
        with pytest.raises(ssrf.Refused):
            await ssrf.check_url(url, allow_private=False, resolver=resolve)


@pytest.mark.parametrize("url", ["ftp://93.184.216.34/", "file:///etc/passwd", "http:///nohost", "http://h:99999/"])
async def test_malformed_or_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(ssrf.Refused):
        await ssrf.check_url(url, allow_private=True, resolver=no_dns)


async def test_target_is_pinned_to_the_checked_address() -> None:
    resolve = resolver_for({"hooks.example.com": ["93.184.216.34"], "six.example.com": ["2606:2800:220:1::1"]})
    t = await ssrf.check_url("https://hooks.example.com:8443/in?a=1#frag", allow_private=False, resolver=resolve)
    assert t.url == "https://93.184.216.34:8443/in?a=1"
    assert t.host == "hooks.example.com:8443"
    assert t.sni_hostname == "hooks.example.com"
    t = await ssrf.check_url("https://user:pw@six.example.com/", allow_private=False, resolver=resolve)
    assert t.url == "https://user:pw@[2606:2800:220:1::1]/"
    assert t.host == "six.example.com"


METADATA_LITERALS = [
    "168.63.129.16",  # Azure WireServer: a public address, refused only because it is named
    "169.254.169.254",
    "169.254.170.2",
    "169.254.170.23",
    "169.254.169.253",
    "169.254.0.23",
    "100.100.100.200",
    "192.0.0.192",
    "fd00:ec2::254",
    "fd00:ec2::253",
    "fd00:ec2::23",
    "fd20:ce::254",
    "fd00:c1::a9fe:a9fe",
    # the same endpoints inside IPv6 addresses that reach IPv4
    "::ffff:168.63.129.16",  # IPv4-mapped
    "::168.63.129.16",  # IPv4-compatible (deprecated)
    "64:ff9b::a83f:8110",  # NAT64 well-known prefix
    "64:ff9b:1::a83f:8110",  # NAT64 local-use prefix
    "2002:a83f:8110::1",  # 6to4
    "64:ff9b::a9fe:a9fe",  # NAT64 around 169.254.169.254
]


@pytest.mark.parametrize("address", METADATA_LITERALS)
@pytest.mark.parametrize("allow_private", [False, True])
async def test_every_known_metadata_endpoint_is_refused_whatever_the_settings(
    address: str, allow_private: bool
) -> None:
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(ssrf.Refused, match="metadata") as err:
        await ssrf.check_url(f"http://{host}/latest/meta-data/", allow_private=allow_private, resolver=no_dns)
    assert "refused" in err.value.reason
    assert "metadata" in (ssrf.refusal(ipaddress.ip_address(address), allow_private) or "")


async def test_azure_wire_server_is_refused_though_its_address_is_public() -> None:
    wire = ipaddress.ip_address("168.63.129.16")
    assert wire.is_global  # nothing but the list catches it
    assert ssrf.refusal(wire) == "168.63.129.16 is a cloud metadata address"
    assert ssrf.refusal(ipaddress.ip_address("168.63.129.17")) is None  # its neighbours are ordinary addresses
    rebind = resolver_for({"hooks.example.net": ["93.184.216.34", "168.63.129.16"]})
    for allow in (False, True):
        with pytest.raises(ssrf.Refused) as err:
            await ssrf.check_url("https://hooks.example.net/in", allow_private=allow, resolver=rebind)
        assert "hooks.example.net resolves to 168.63.129.16 is a cloud metadata address" in err.value.reason


@pytest.mark.parametrize(
    "host", ["metadata.tencentyun.com", "api.metadata.cloud.ibm.com", "metadata.platformequinix.com"]
)
async def test_more_metadata_hostnames_are_refused_by_name(host: str) -> None:
    public = resolver_for({host: ["93.184.216.34"]})
    with pytest.raises(ssrf.Refused, match="metadata endpoint"):
        await ssrf.check_url(f"http://{host}/", allow_private=True, resolver=public)


@pytest.mark.parametrize("address", ["::8.8.8.8", "64:ff9b:1::808:808"])
async def test_ipv6_forms_of_public_addresses_follow_the_private_setting(address: str) -> None:
    with pytest.raises(ssrf.Refused):
        await ssrf.check_url(f"http://[{address}]/", allow_private=False, resolver=no_dns)
    target = await ssrf.check_url(f"http://[{address}]/", allow_private=True, resolver=no_dns)
    assert ipaddress.ip_address(target.address) == ipaddress.ip_address(address)
