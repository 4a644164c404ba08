"""The per-zone DNSSEC setting: from the GSLBConfig to the zone the DNS loads, a clear
rejection for an unknown algorithm, which zones the reconciler makes keys for, and the key
secret: encrypted at rest, refused when it is not the one the keys were made with."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.reconciler.plan import plan
from services.reconciler.zone_keys import zones_needing_keys
from shared import dnssec
from shared.models import DnssecAlgorithm, PolicyState
from shared.settings import DnssecSecretSettings, SettingsError, load_settings
from tests.unit.test_plan import CONFIG, CONFIG_SPEC, SEED_WORLD, policies, policy


def config_with_dnssec(value: object) -> dict[str, object]:
    zone = {**CONFIG_SPEC["zones"][0], "dnssec": value}  # type: ignore[index]
    return {**CONFIG_SPEC, "zones": [zone]}


def test_the_zone_setting_reaches_the_zone_spec() -> None:
    spec = config_with_dnssec({"enabled": True, "algorithm": "ED25519"})
    result = plan(SEED_WORLD, policies(policy(CONFIG, spec)))
    (zone,) = result.zones.values()
    assert zone.signed and zone.dnssec is not None
    assert zone.dnssec.algorithm == DnssecAlgorithm.ED25519
    assert zones_needing_keys(result.zones, []) == [(zone.name, DnssecAlgorithm.ED25519)]
    assert zones_needing_keys(result.zones, [zone.name]) == []


def test_an_unsigned_zone_needs_no_keys_and_encodes_as_before() -> None:
    result = plan(SEED_WORLD, policies(policy(CONFIG, CONFIG_SPEC)))
    (zone,) = result.zones.values()
    assert not zone.signed
    assert "dnssec" not in zone.model_dump(by_alias=True)
    assert zones_needing_keys(result.zones, []) == []


def test_an_unknown_algorithm_is_rejected_naming_the_field_and_the_choices() -> None:
    spec = config_with_dnssec({"enabled": True, "algorithm": "RSASHA1"})
    status = plan(SEED_WORLD, policies(policy(CONFIG, spec))).statuses[CONFIG]
    assert status.state == PolicyState.REJECTED
    assert "dnssec.algorithm" in status.message
    assert "ECDSAP256SHA256" in status.message and "ED25519" in status.message


def test_private_keys_are_encrypted_and_need_the_same_secret() -> None:
    secret = dnssec.load_secret(dnssec.new_secret())
    keys = dnssec.new_zone_keys(
        "example.", DnssecAlgorithm.ECDSAP256SHA256, secret, datetime.now(UTC)
    )
    assert all("PRIVATE" not in k.private_key for k in keys.keys)
    assert dnssec.private_key(keys.keys[0], secret) is not None
    other = dnssec.load_secret(dnssec.new_secret())
    with pytest.raises(dnssec.KeySecretError, match="not the secret"):
        dnssec.private_key(keys.keys[0], other)
    (ds,) = dnssec.ds_records(keys)
    assert ds.startswith("example. IN DS ") and f" {dnssec.key_tag(keys.keys[0])} 13 2 " in ds


def test_a_malformed_secret_is_refused_with_the_setting_named() -> None:
    with pytest.raises(SettingsError, match="KGSLB_DNSSEC_KEY_SECRET"):
        load_settings(DnssecSecretSettings, environ={"KGSLB_DNSSEC_KEY_SECRET": "short"})
    with pytest.raises(dnssec.KeySecretError, match="--dnssec-key-secret"):
        dnssec.load_secret("", "")
