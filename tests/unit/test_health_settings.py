"""The health service's vantage-point settings: the site a replica probes from and the source
address its probes leave from; defaults keep one vantage point, bad values are named."""

from __future__ import annotations

import pytest

from services.health.probes import Prober
from services.health.settings import HealthSettings
from shared.settings import SettingsError, load_settings


def test_without_settings_a_replica_is_the_one_vantage_point_and_lets_the_os_pick_the_source() -> (
    None
):
    settings = load_settings(HealthSettings, environ={})
    assert settings.site == ""
    assert settings.probe_source is None


def test_site_and_probe_source_come_from_the_environment_or_flags() -> None:
    environ = {"KGSLB_SITE": "s1az2", "KGSLB_PROBE_SOURCE": "127.0.0.12"}
    settings = load_settings(HealthSettings, {"site": "s2"}, environ=environ)
    assert settings.site == "s2"
    assert str(settings.probe_source) == "127.0.0.12"


def test_a_probe_source_that_is_not_an_address_is_named() -> None:
    with pytest.raises(SettingsError, match=r"--probe-source='eth0'"):
        load_settings(HealthSettings, {"probe_source": "eth0"}, environ={})


def test_probes_leave_from_the_source_only_for_members_of_its_family() -> None:
    prober = Prober(source="127.0.0.12")
    assert prober._local_addr("127.10.25.46") == ("127.0.0.12", 0)
    assert prober._local_addr("::1") is None
    assert Prober()._local_addr("127.10.25.46") is None
