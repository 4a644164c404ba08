"""ZSK rollover by pre-publication, step by step: a new ZSK is published a wait before it
signs, the old one stays published a wait after, then goes; the KSK never moves; nothing
happens early, and a lifetime of zero never rolls."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.reconciler.rollover import RolloverPolicy, zsk_step
from shared import dnssec
from shared.models import DnssecAlgorithm, DnssecKey, KeyRole, KeyState, ZoneKeys

SECRET = dnssec.load_secret(dnssec.new_secret())
START = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = RolloverPolicy(lifetime=timedelta(days=30), wait=timedelta(days=1))


def make_zsk(number: int) -> DnssecKey:
    algorithm = DnssecAlgorithm.ED25519 if number == 15 else DnssecAlgorithm.ECDSAP256SHA256
    return dnssec.generate(algorithm, KeyRole.ZSK, SECRET, START)


def states(keys: ZoneKeys) -> list[tuple[str, str]]:
    return [(k.role.value, k.state.value) for k in keys.keys]


def test_a_full_zsk_rollover() -> None:
    keys = dnssec.new_zone_keys("example.", DnssecAlgorithm.ECDSAP256SHA256, SECRET, START)
    old_zsk = keys.keys[1]

    assert zsk_step(keys, START + timedelta(days=29), POLICY, make_zsk) is None
    published_at = START + timedelta(days=30)
    step1 = zsk_step(keys, published_at, POLICY, make_zsk)
    assert step1 is not None
    assert states(step1) == [("ksk", "active"), ("zsk", "active"), ("zsk", "published")]
    new_zsk = step1.keys[2]
    assert new_zsk.algorithm == old_zsk.algorithm and new_zsk.public_key != old_zsk.public_key

    assert zsk_step(step1, published_at + timedelta(hours=23), POLICY, make_zsk) is None
    switched_at = published_at + timedelta(days=1)
    step2 = zsk_step(step1, switched_at, POLICY, make_zsk)
    assert step2 is not None
    assert states(step2) == [("ksk", "active"), ("zsk", "retired"), ("zsk", "active")]

    assert zsk_step(step2, switched_at + timedelta(hours=23), POLICY, make_zsk) is None
    step3 = zsk_step(step2, switched_at + timedelta(days=1), POLICY, make_zsk)
    assert step3 is not None
    assert states(step3) == [("ksk", "active"), ("zsk", "active")]
    assert step3.keys[0] == keys.keys[0]
    assert step3.keys[1].public_key == new_zsk.public_key

    # The new ZSK's lifetime counts from its activation.
    assert zsk_step(step3, switched_at + timedelta(days=29), POLICY, make_zsk) is None
    assert zsk_step(step3, switched_at + timedelta(days=30), POLICY, make_zsk) is not None


def test_a_lifetime_of_zero_never_rolls() -> None:
    keys = dnssec.new_zone_keys("example.", DnssecAlgorithm.ED25519, SECRET, START)
    never = RolloverPolicy(lifetime=timedelta(0), wait=timedelta(days=1))
    assert zsk_step(keys, START + timedelta(days=3650), never, make_zsk) is None


def test_every_published_key_is_in_the_dnskey_set_and_only_active_ones_sign() -> None:
    keys = dnssec.new_zone_keys("example.", DnssecAlgorithm.ECDSAP256SHA256, SECRET, START)
    step1 = zsk_step(keys, START + timedelta(days=30), POLICY, make_zsk)
    assert step1 is not None
    from services.dns.signer import SigningKey, ZoneSigner
    from services.dns.wire import name_to_wire

    signer = ZoneSigner(
        name_to_wire("example"),
        [SigningKey(k, dnssec.private_key(k, SECRET)) for k in step1.keys],
        300, 0, 1,
    )  # fmt: skip
    assert signer.dnskeys.count == 3
    assert [k.key.state for k in signer.zsks] == [KeyState.ACTIVE]
    assert signer.zsks[0].key.public_key == keys.keys[1].public_key
