"""DNS wire format at the responder's edge: parse a query, render a `Resolution`. Pure, no I/O.

`parse_query(data)` never raises: it returns a `Query` (answer it), `Reply` (send these bytes:
FORMERR, NOTIMP, BADVERS) or `None` (drop: no header to answer, or a response, since answering
responses lets two resolvers ping-pong errors at each other forever).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from shoal.dns.records import ARecord, Outcome, Resolution, SoaRecord, SrvRecord

HEADER = struct.Struct("!HHHHHH")  # id, flags, qdcount, ancount, nscount, arcount
UDP_LEGACY_SIZE = 512  # without EDNS (RFC 1035)
OUR_EDNS_PAYLOAD = 1232  # what we advertise and the most we send over UDP (DNS flag day 2020)
MAX_QUERY_SIZE = 4096  # a real query is a few hundred bytes; bigger ones are refused
IN = dns.rdataclass.IN


@dataclass(frozen=True)
class Query:
    message: dns.message.Message
    qname: dns.name.Name
    rdtype: dns.rdatatype.RdataType
    rdclass: dns.rdataclass.RdataClass

    @property
    def udp_limit(self) -> int:
        """The largest UDP answer this client takes (512 without EDNS)."""
        if self.message.edns < 0:
            return UDP_LEGACY_SIZE
        return max(UDP_LEGACY_SIZE, min(self.message.payload, OUR_EDNS_PAYLOAD))


@dataclass(frozen=True)
class Reply:
    """An error answer made from the header alone, and why."""

    wire: bytes
    reason: str


def parse_query(data: bytes) -> Query | Reply | None:
    """Classify one incoming packet (see the module docstring). Never raises."""
    if len(data) < HEADER.size:
        return None
    qid, flags = HEADER.unpack_from(data)[:2]
    if flags & dns.flags.QR:
        return None
    opcode = dns.opcode.from_flags(flags)
    if opcode != dns.opcode.QUERY:
        return Reply(error_header(qid, flags, dns.rcode.NOTIMP), f"opcode {opcode}")
    if len(data) > MAX_QUERY_SIZE:
        return Reply(error_header(qid, flags, dns.rcode.FORMERR), f"{len(data)} bytes")
    try:
        message = dns.message.from_wire(data)
    except Exception as exc:  # dnspython raises many kinds on bad input; all mean FORMERR
        return Reply(error_header(qid, flags, dns.rcode.FORMERR), type(exc).__name__)
    if len(message.question) != 1:
        return Reply(error_header(qid, flags, dns.rcode.FORMERR), "QDCOUNT != 1")
    if message.edns > 0:
        response = dns.message.make_response(message)
        response.use_edns(0, 0, OUR_EDNS_PAYLOAD)
        response.set_rcode(dns.rcode.BADVERS)
        return Reply(response.to_wire(), f"EDNS version {message.edns}")
    question = message.question[0]
    return Query(message, question.name, question.rdtype, question.rdclass)


def error_header(qid: int, query_flags: int, rcode: dns.rcode.Rcode) -> bytes:
    """A header-only response: the query's id, opcode and RD bit, QR and `rcode` set."""
    flags = dns.flags.QR | (query_flags & (0x7800 | dns.flags.RD)) | (rcode & 0xF)
    return HEADER.pack(qid, flags, 0, 0, 0, 0)


def qname_text(query: Query) -> str:
    """The name as `RecordTable.resolve` takes it; labels with bytes no Docker name has are
    escaped by dnspython, so they never match a record."""
    return query.qname.to_text(omit_final_dot=True)


def render(query: Query, resolution: Resolution) -> dns.message.Message:
    """The response to `query` for our own `resolution` (not NOT_OURS)."""
    response = dns.message.make_response(
        query.message, recursion_available=True, our_payload=OUR_EDNS_PAYLOAD
    )
    response.flags |= dns.flags.AA
    if resolution.outcome is Outcome.NXDOMAIN:
        response.set_rcode(dns.rcode.NXDOMAIN)
    ttl = resolution.ttl
    for record in resolution.answer:
        # Owner names are the question's, as the client spelled it (case included).
        _add(response, response.answer, query.qname, record, ttl)
    for soa in resolution.authority:
        _add(response, response.authority, dns.name.from_text(soa.name), soa, ttl)
    for extra in resolution.additional:
        _add(response, response.additional, dns.name.from_text(extra.name), extra, ttl)
    return response


def status(query: Query, rcode: dns.rcode.Rcode) -> dns.message.Message:
    """A response with no records and `rcode` (SERVFAIL, REFUSED)."""
    response = dns.message.make_response(
        query.message, recursion_available=True, our_payload=OUR_EDNS_PAYLOAD
    )
    response.set_rcode(rcode)
    return response


def to_wire(query: Query, response: dns.message.Message, udp: bool) -> bytes:
    """`response` in wire format; over UDP, one that does not fit the client's limit becomes
    an empty answer with TC set, so the client retries over TCP."""
    limit = query.udp_limit if udp else 65535
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        return truncated(query)


def truncated(query: Query) -> bytes:
    """An empty response with TC set (the answer does not fit over UDP)."""
    response = dns.message.make_response(
        query.message, recursion_available=True, our_payload=OUR_EDNS_PAYLOAD
    )
    response.flags |= dns.flags.TC
    return response.to_wire()


def with_id(wire: bytes, qid: int) -> bytes:
    """`wire` with its message id replaced."""
    return struct.pack("!H", qid) + wire[2:]


def _add(
    response: dns.message.Message,
    section: list[dns.rrset.RRset],
    name: dns.name.Name,
    record: ARecord | SrvRecord | SoaRecord,
    ttl: int,
) -> None:
    # from_text is typed (the rdata classes' constructors are not) and cheap at these sizes.
    if isinstance(record, ARecord):
        rdtype, text = dns.rdatatype.A, str(record.address)
    elif isinstance(record, SrvRecord):
        rdtype = dns.rdatatype.SRV
        text = f"{record.priority} {record.weight} {record.port} {record.target}"
    else:
        rdtype = dns.rdatatype.SOA
        text = (
            f"{record.mname} {record.rname} {record.serial} {record.refresh} {record.retry}"
            f" {record.expire} {record.minimum}"
        )
    rdata = dns.rdata.from_text(IN, rdtype, text)
    rrset = response.find_rrset(section, name, IN, rdata.rdtype, create=True)
    rrset.add(rdata, ttl)
