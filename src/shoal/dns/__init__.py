"""Service discovery DNS: a pure record table built from the netmap and an asyncio responder.

table = RecordTable.from_netmap(netmap)          # pure; names documented in records.py
server = DnsServer(lambda: table, upstreams_from_resolv_conf(exclude=[mesh_ip]))
await server.start([(str(mesh_ip), 53)])
...                                              # table = RecordTable.from_netmap(new_netmap)
await server.close()
"""

from shoal.dns.errors import DnsBindFailed, DnsError
from shoal.dns.records import (
    TTL,
    ARecord,
    Outcome,
    QType,
    RecordTable,
    Resolution,
    Resolver,
    SoaRecord,
    SrvRecord,
    rdtype_name,
)
from shoal.dns.server import DnsServer, DnsStats, upstreams_from_resolv_conf

__all__ = [
    "TTL",
    "ARecord",
    "DnsBindFailed",
    "DnsError",
    "DnsServer",
    "DnsStats",
    "Outcome",
    "QType",
    "RecordTable",
    "Resolution",
    "Resolver",
    "SoaRecord",
    "SrvRecord",
    "rdtype_name",
    "upstreams_from_resolv_conf",
]
