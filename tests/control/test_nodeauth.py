"""Node signatures as the server checks them: the verifier is exercised through the API in
test_trust, test_rotation and test_replicas; here, what has no route of its own."""

from __future__ import annotations

from shoal.control.nodeauth import LocalClaims


async def test_local_claims_take_each_signature_once_until_it_expires() -> None:
    claims = LocalClaims()
    assert await claims.claim_signature(b"mac", expires_at=100, now=10)
    assert not await claims.claim_signature(b"mac", expires_at=100, now=50)
    assert await claims.claim_signature(b"mac", expires_at=200, now=101)
