"""Endpoint probes: how a node learns the address and port the Internet sees for its
WireGuard port, without stopping WireGuard (which owns that port).

The agent sends one UDP datagram *from WireGuard's listen port* (built by hand on a raw socket,
see `shoal.agent.endpoints`) to the server's probe responder (`shoal.control.stun`, UDP 3478 and
3479 on the server's address). A NAT maps it exactly as it maps WireGuard's own packets, so the
source the server sees is the node's reflexive endpoint. The server answers with that address;
the answer reaches the host on WireGuard's port, where a raw socket reads a copy (WireGuard
drops the datagram it cannot parse).

Wire format (big-endian; both MACed with the node's key shared with the server, the same
X25519-derived key that signs its HTTPS calls, `shoal.model.nodeauth.shared_key`):

    request  "SHP1" | node public key (32) | unix time (8) | nonce (16) | mac (32)   = 92 bytes
             mac = HMAC-SHA256(key, "shoal-probe-1" | public key | time | nonce)
    reply    "SHR1" | nonce (16) | observed IPv4 (4) | observed port (2) | mac (32) = 58 bytes
             mac = HMAC-SHA256(key, "shoal-probe-reply-1" | nonce | IPv4 | port)

Only a node's key holder makes a request the server answers (the server also checks the key
is a node of its mesh), so the responder is no open reflector, and the reply is smaller than
the request (no amplification). Only the server makes a reply the node believes, bound to the
node's nonce, so nobody on the path can make a node advertise a wrong endpoint. The server
keeps nothing: the node reports its endpoints over its signed HTTPS registration.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from shoal.model.errors import ShoalError
from shoal.model.keys import InvalidKey, PublicKey

PROBE_PORT = 3478  # the responder; a second one on PROBE_PORT + 1 tells NAT kinds apart
REQUEST_MAGIC = b"SHP1"
REPLY_MAGIC = b"SHR1"
REQUEST_SIZE = 4 + 32 + 8 + 16 + 32
REPLY_SIZE = 4 + 16 + 4 + 2 + 32
WINDOW_SECONDS = 300  # a request's time may be this far off the server's clock
_REQUEST_LABEL = b"shoal-probe-1"
_REPLY_LABEL = b"shoal-probe-reply-1"


class BadProbe(ShoalError):
    """A datagram that is not a valid probe request or reply (dropped, never answered)."""

    code = "bad_probe"


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    public_key: PublicKey
    timestamp: int  # unix seconds, the node's clock
    nonce: bytes  # 16 random bytes
    mac: bytes

    def verify(self, key: bytes, now: int) -> None:
        """BadProbe unless MACed with `key` and within the time window of `now`."""
        if abs(now - self.timestamp) > WINDOW_SECONDS:
            raise BadProbe(f"probe is {now - self.timestamp:+d}s off the server's clock")
        expected = _request_mac(key, self.public_key, self.timestamp, self.nonce)
        if not hmac.compare_digest(expected, self.mac):
            raise BadProbe("probe MAC does not match")


def _request_mac(key: bytes, public_key: PublicKey, timestamp: int, nonce: bytes) -> bytes:
    message = _REQUEST_LABEL + public_key.raw + struct.pack("!Q", timestamp) + nonce
    return hmac.new(key, message, hashlib.sha256).digest()


def _reply_mac(key: bytes, nonce: bytes, ip: IPv4Address, port: int) -> bytes:
    message = _REPLY_LABEL + nonce + ip.packed + struct.pack("!H", port)
    return hmac.new(key, message, hashlib.sha256).digest()


def encode_request(key: bytes, public_key: PublicKey, timestamp: int, nonce: bytes) -> bytes:
    if len(nonce) != 16:
        raise ValueError("a probe nonce is 16 bytes")
    mac = _request_mac(key, public_key, timestamp, nonce)
    return REQUEST_MAGIC + public_key.raw + struct.pack("!Q", timestamp) + nonce + mac


def parse_request(data: bytes) -> ProbeRequest:
    """The request in `data` (its MAC not yet checked); BadProbe if it is not one."""
    if len(data) != REQUEST_SIZE or not data.startswith(REQUEST_MAGIC):
        raise BadProbe("not a shoal probe request")
    try:
        key = PublicKey(raw=data[4:36])
    except (InvalidKey, ValueError) as exc:
        raise BadProbe("probe names no usable key") from exc
    (timestamp,) = struct.unpack("!Q", data[36:44])
    return ProbeRequest(public_key=key, timestamp=timestamp, nonce=data[44:60], mac=data[60:92])


def encode_reply(key: bytes, nonce: bytes, ip: IPv4Address, port: int) -> bytes:
    mac = _reply_mac(key, nonce, ip, port)
    return REPLY_MAGIC + nonce + ip.packed + struct.pack("!H", port) + mac


def parse_reply(data: bytes, key: bytes, nonce: bytes) -> tuple[IPv4Address, int]:
    """The observed (address, port) if `data` is the server's answer to our `nonce`."""
    if len(data) != REPLY_SIZE or not data.startswith(REPLY_MAGIC):
        raise BadProbe("not a shoal probe reply")
    if not hmac.compare_digest(data[4:20], nonce):
        raise BadProbe("probe reply for another request")
    ip = IPv4Address(data[20:24])
    (port,) = struct.unpack("!H", data[24:26])
    if not hmac.compare_digest(_reply_mac(key, nonce, ip, port), data[26:58]):
        raise BadProbe("probe reply MAC does not match")
    return ip, port
