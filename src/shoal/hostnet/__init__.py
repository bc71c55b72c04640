"""Host networking: links, addresses and routes over netlink, plus IPv4 forwarding.

The only importer of pyroute2 besides the data plane; every call acts on the current network
namespace, converges one aspect and returns whether it changed anything.
"""

from shoal.hostnet.bridgeports import port_addresses
from shoal.hostnet.errors import HostNetError, LinkNotFound
from shoal.hostnet.netlink import (
    create_link,
    delete_link,
    ensure_address,
    ensure_link_up,
    host_prefixes,
    link_exists,
    link_kind,
    sync_routes,
)
from shoal.hostnet.sysctl import ensure_ip_forward

__all__ = [
    "HostNetError",
    "LinkNotFound",
    "create_link",
    "delete_link",
    "ensure_address",
    "ensure_ip_forward",
    "ensure_link_up",
    "host_prefixes",
    "link_exists",
    "link_kind",
    "port_addresses",
    "sync_routes",
]
