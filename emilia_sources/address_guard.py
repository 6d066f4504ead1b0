"""Where ingest may connect: public internet addresses, plus the hosts and ranges an operator allows by name.

A feed list is user input from the internet, and so is every URL inside a feed (enclosures, redirects). Without a
guard, one line in a feed list reaches the pod's loopback services, the cluster's private network or the cloud
metadata endpoint (169.254.169.254) with the pod's credentials. So every connection the downloader opens goes
through `AddressPolicy.resolve`:

- the host is resolved (getaddrinfo) and *every* address it resolves to must be public: loopback, private (RFC 1918,
  unique-local IPv6), link-local, multicast, reserved, unspecified, shared (CGNAT) and any other non-global address
  is refused, IPv4-mapped IPv6 (`::ffff:127.0.0.1`) judged as the IPv4 address it maps;
- the socket then connects to exactly the addresses that were checked (`guarded_session` installs a urllib3
  connection class that does so), so a DNS answer that changes between the check and the connect (DNS rebinding)
  cannot slip a private address in; TLS still verifies the certificate against the host name;
- the check sits in the connection itself, so it holds for every hop of a redirect chain and for every retry; the
  downloader follows redirects by hand as well, to refuse other schemes and to name the hop in the reason;
- a guarded session ignores proxy settings from the environment (`trust_env` off): behind a proxy the address
  checked would be the proxy's, not the destination's.

`INGEST_ALLOW_HOSTS` (comma- or space-separated host names, IP addresses and CIDR ranges) lets named hosts or ranges
through, e.g. an internal mirror, or `127.0.0.1` for the test servers. A host allowed by name is trusted whatever
it resolves to; an address or range allows exactly those addresses.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as u3conn

ALLOW_ENV = "INGEST_ALLOW_HOSTS"
ALLOW_HINT = f"set {ALLOW_ENV} to allow it"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
Resolver = Callable[[str, int], list[str]]  # host, port -> IP address strings


class AddressRefused(Exception):
    """A destination the policy does not allow; `reason` says which address and what kind it is.

    Deliberately not an OSError: urllib3 and requests wrap those into retryable connection errors, and a refusal is
    final.
    """

    def __init__(self, host: str, reason: str, hint: bool = True):
        super().__init__(f"refused: {reason}" + (f" ({ALLOW_HINT})" if hint else ""))
        self.host = host
        self.reason = reason


def non_public_kind(ip: IPAddress) -> str | None:
    """What kind of non-public address `ip` is ('loopback', 'link-local', ...), or None for a public one."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is None and ip in _NAT64:  # 64:ff9b::/96 reaches the IPv4 address in its last 32 bits
            mapped = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if mapped is not None:
            kind = non_public_kind(mapped)
            return f"IPv4-mapped {kind}" if kind else None
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),  # before "private": 169.254/16 is both, and link-local says more
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),  # before "private": 240/4 is both
        ("private", ip.is_private),
    )
    for kind, hit in checks:
        if hit:
            return kind
    return None if ip.is_global else "non-public"


def _parse_ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 scope id ("fe80::1%eth0") says nothing here


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, u3conn.allowed_gai_family(), socket.SOCK_STREAM)
    return [str(sockaddr[0]) for *_, sockaddr in infos]


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses, plus `hosts` (names, trusted whatever they resolve to) and `networks` (addresses/ranges).

    `resolver` replaces getaddrinfo (tests use it to give a public-looking name a local address); it is used both
    for the check and for the connection, so the two cannot disagree.
    """

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()
    resolver: Resolver | None = field(default=None, compare=False)

    @classmethod
    def parse(cls, entries: Iterable[str], origin: str = ALLOW_ENV, resolver: Resolver | None = None) -> AddressPolicy:
        """Host names, IP addresses and CIDR ranges; anything else is a ValueError naming `origin` and the entry."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().strip("[]").lower().rstrip(".")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if "/" in entry or ":" in entry or not all(c.isalnum() or c in "-._" for c in entry):
                raise ValueError(
                    f"{origin}: {raw.strip()!r} is neither a host name nor an IP address or CIDR range"
                )
            hosts.add(entry)
        return cls(frozenset(hosts), tuple(networks), resolver)

    @classmethod
    def from_env(
        cls, extra: Iterable[str] = (), environ: Mapping[str, str] | None = None, resolver: Resolver | None = None
    ) -> AddressPolicy:
        """The policy of `INGEST_ALLOW_HOSTS` plus `extra` entries (the assets' `allow_hosts` config)."""
        env = os.environ if environ is None else environ
        from_env = cls.parse(env.get(ALLOW_ENV, "").replace(",", " ").split(), ALLOW_ENV)
        from_extra = cls.parse(extra, "allow_hosts")
        return cls(from_env.hosts | from_extra.hosts, from_env.networks + from_extra.networks, resolver)

    def allows_address(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self.networks if net.version == ip.version)

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses a connection to `host` may use (all checked); raises AddressRefused or socket.gaierror."""
        name = host.strip("[]").lower().rstrip(".")
        addresses = list(dict.fromkeys((self.resolver or _system_resolver)(name, port)))
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, f"{name} resolves to no address")
        if name in self.hosts:
            return addresses
        for text in addresses:
            ip = _parse_ip(text)
            if self.allows_address(ip):
                continue
            kind = non_public_kind(ip)
            if kind is not None:
                what = f"{text} is" if _is_literal(name, ip) else f"{name} resolves to {text},"
                article = "an" if kind[0].lower() in "aeiou" else "a"
                raise AddressRefused(name, f"{what} {article} {kind} address")
        return addresses

    def check_url(self, url: str) -> None:
        """For URLs handed to a tool that makes its own connections (yt-dlp): scheme and host, checked once."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            raise AddressRefused(parts.hostname or "", f"URL scheme {parts.scheme or '(none)'!r} is not http(s)",
                                 hint=False)
        if not parts.hostname:
            raise AddressRefused("", "URL has no host", hint=False)
        self.resolve(parts.hostname, parts.port or (443 if parts.scheme.lower() == "https" else 80))


def _is_literal(name: str, ip: IPAddress) -> bool:
    try:
        return _parse_ip(name) == ip
    except ValueError:
        return False


class _PinnedConnection:
    """Mixin for urllib3 connections: resolve through the policy, then connect to exactly those addresses."""

    policy: AddressPolicy

    def _new_conn(self) -> socket.socket:
        conn: HTTPConnection = self  # type: ignore[assignment]
        try:
            addresses = self.policy.resolve(conn._dns_host, conn.port)  # type: ignore[arg-type]
        except socket.gaierror as err:
            raise NameResolutionError(conn.host, conn, err) from err
        last: OSError | None = None
        for address in addresses:
            try:
                return u3conn.create_connection(
                    (address, conn.port),  # type: ignore[arg-type]
                    conn.timeout,
                    source_address=conn.source_address,
                    socket_options=conn.socket_options,
                )
            except OSError as err:
                last = err
        if isinstance(last, TimeoutError):
            raise ConnectTimeoutError(conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})")
        raise NewConnectionError(conn, f"Failed to establish a new connection: {last}") from last


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose every connection goes through `policy` (see the module docstring)."""

    def __init__(self, policy: AddressPolicy, **kwargs: object):
        self.policy = policy
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]
        attrs = {"policy": self.policy}
        http_conn = type("GuardedHTTPConnection", (_PinnedConnection, HTTPConnection), attrs)
        https_conn = type("GuardedHTTPSConnection", (_PinnedConnection, HTTPSConnection), attrs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
        }

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: object) -> urllib3.PoolManager:
        raise AddressRefused(proxy, "a proxy would hide the destination from the address guard", hint=False)


def guarded_session(policy: AddressPolicy) -> requests.Session:
    """A requests session that only reaches what `policy` allows; proxy settings from the environment are ignored."""
    session = requests.Session()
    session.trust_env = False
    adapter = GuardedAdapter(policy)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def session_policy(session: requests.Session) -> AddressPolicy | None:
    """The policy a session was made with by `guarded_session`, None for any other session."""
    adapters = [session.get_adapter(f"{scheme}://guard.invalid/") for scheme in ("http", "https")]
    if all(isinstance(a, GuardedAdapter) for a in adapters) and not session.trust_env:
        return adapters[0].policy  # type: ignore[union-attr]
    return None
