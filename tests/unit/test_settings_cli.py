"""Settings and flags (issue 20, item 3): each service's settings are a pydantic-settings model
read from `KGSLB_*` variables, and each service command has one typed flag per setting, in
its --help with the variable's name and the default, and in shell completion. Defaults <
environment < flags; a bad value is one line naming the flag or variable, never a secret."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from kgslb.cli import app
from kgslb.settings_cli import SettingsCommand, settings_flags
from services.dns.settings import DnsSettings
from services.health.settings import HealthSettings
from services.reconciler.settings import ReconcilerSettings
from services.watcher.settings import WatcherSettings
from shared.settings import KgslbSettings, SettingsError, env_key, flag_name, load_settings

SERVICES: dict[str, type[KgslbSettings]] = {
    "dns": DnsSettings,
    "health": HealthSettings,
    "reconciler": ReconcilerSettings,
    "watcher": WatcherSettings,
}
SECRET = "Zm9vYmFyYmF6cXV1eGZvb2JhcmJhenF1dXhmb29iYXI="  # 32 bytes, a valid Fernet key
runner = CliRunner()


def probe(model: type[KgslbSettings]) -> typer.Typer:
    """A command built as the service commands are, printing the settings it was given."""
    probe_app = typer.Typer()

    @probe_app.command("probe", cls=SettingsCommand)
    @settings_flags(model, skip=())
    def probe_command(settings: Any) -> None:
        print(settings.model_dump_json())

    @probe_app.command("other")
    def other() -> None:  # two commands: `probe` is a subcommand, as `kgslb dns` is
        pass

    return probe_app


def given(model: type[KgslbSettings], args: list[str], env: dict[str, str]) -> dict[str, Any]:
    result = runner.invoke(probe(model), ["probe", *args], env=env)
    assert result.exit_code == 0, result.output
    values: dict[str, Any] = json.loads(result.stdout)
    return values


# Precedence -----------------------------------------------------------------------------------


def test_defaults_then_the_environment_then_flags() -> None:
    settings = load_settings(
        DnsSettings,
        {"dns_port": 3000, "workers": None},
        environ={"KGSLB_DNS_PORT": "2000", "KGSLB_WORKERS": "2", "KGSLB_OTHER": "ignored"},
    )

    assert settings.dns_port == 3000  # flag over environment
    assert settings.workers == 2  # environment over default (None: the flag was not given)
    assert settings.edns_udp_size == 1232  # default


def test_the_models_read_the_environment_themselves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KGSLB_LEASE_TTL_SECONDS", "7.5")
    monkeypatch.setenv("KGSLB_NATS_URL", "nats://127.0.0.1:4223")

    assert ReconcilerSettings().lease_ttl_seconds == 7.5
    assert ReconcilerSettings(lease_ttl_seconds=3).lease_ttl_seconds == 3
    assert ReconcilerSettings().nats_url == "nats://127.0.0.1:4223"


def test_on_the_command_line_a_flag_wins_even_when_it_says_the_default() -> None:
    env = {"KGSLB_DNS_PORT": "2000"}
    assert given(DnsSettings, [], {})["dns_port"] == 1053
    assert given(DnsSettings, [], env)["dns_port"] == 2000
    assert given(DnsSettings, ["--dns-port", "1053"], env)["dns_port"] == 1053
    assert given(DnsSettings, ["--dns-port=1054"], env)["dns_port"] == 1054


def test_flags_keep_their_syntax_booleans_take_a_value() -> None:
    assert given(WatcherSettings, ["--home", "true"], {})["home"] is True
    assert given(WatcherSettings, ["--home", "false"], {"KGSLB_HOME": "true"})["home"] is False
    assert given(WatcherSettings, [], {"KGSLB_HOME": "true"})["home"] is True
    values = given(WatcherSettings, ["--sources", "Ingress,Service"], {})
    assert values["sources"] == "Ingress,Service"  # lists stay comma-separated text
    assert given(DnsSettings, ["--answer-metrics", "cluster"], {})["answer_metrics"] == "cluster"


# Errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "named", "says"),
    [
        (["--dns-port", "70000"], {}, "--dns-port=70000", "less than or equal to 65535"),
        (["--dns-port", "abc"], {}, "--dns-port", "valid integer"),
        ([], {"KGSLB_DNS_PORT": "abc"}, "KGSLB_DNS_PORT='abc'", "valid integer"),
        ([], {"KGSLB_WORKERS": "0"}, "KGSLB_WORKERS='0'", "greater than or equal to 1"),
        (["--dns-prot", "1"], {}, "--dns-prot", "--dns-port"),
        (["--answer-metrics", "fqdn"], {}, "--answer-metrics", "'member', 'cluster', 'off'"),
        (["--health-quorum", "most"], {}, "--health-quorum='most'", "'majority'"),
        (["stray"], {}, "stray", "unexpected"),
    ],
    ids=["range", "type", "env-type", "env-range", "unknown-flag", "choice", "validator",
         "argument"],
)  # fmt: skip
def test_a_bad_value_is_one_line_naming_where_it_came_from_and_what_is_allowed(
    args: list[str], env: dict[str, str], named: str, says: str
) -> None:
    result = runner.invoke(probe(DnsSettings), ["probe", *args], env=env)

    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("kgslb probe: ")
    assert named in result.stderr and says in result.stderr, result.stderr


def test_a_check_across_settings_names_both_flags() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(DnsSettings, {"dnssec_resign_seconds": 10**6}, environ={})
    assert "--dnssec-resign-seconds" in str(error.value)
    assert "--dnssec-signature-validity-seconds" in str(error.value)


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--dnssec-key-secret", "not-a-key-but-a-secret"], {}, "--dnssec-key-secret"),
        ([], {"KGSLB_DNSSEC_KEY_SECRET": "not-a-key-but-a-secret"}, "KGSLB_DNSSEC_KEY_SECRET"),
    ],
)
def test_a_bad_secret_is_named_but_never_echoed(
    args: list[str], env: dict[str, str], named: str
) -> None:
    result = runner.invoke(probe(ReconcilerSettings), ["probe", *args], env=env)

    assert result.exit_code == 2
    assert named in result.stderr and "32 bytes" in result.stderr
    assert "not-a-key-but-a-secret" not in result.output


def test_secrets_are_neither_shown_as_defaults_nor_repeated_by_the_settings() -> None:
    help_text = runner.invoke(app, ["reconciler", "--help"]).stdout
    settings = load_settings(
        ReconcilerSettings, {"dnssec_key_secret": SECRET, "nats_password": "pw-123"}, environ={}
    )

    assert SECRET not in repr(settings) and "pw-123" not in repr(settings)
    assert re.search(r"--nats-password <str>\s+nats password \(env KGSLB_NATS_PASSWORD\)\n",
                     help_text)  # fmt: skip


# Help and completion -------------------------------------------------------------------------


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_the_help_of_each_service_lists_every_setting_typed_with_its_variable(
    service: str,
) -> None:
    result = runner.invoke(app, [service, "--help"])
    text = " ".join(result.stdout.split())  # the plain help wraps long lines

    assert result.exit_code == 0
    for name in SERVICES[service].model_fields:
        assert f"{flag_name(name)} <" in text, name
        assert f"(env {env_key(name)})" in text, name
    assert "--nats-url <str>" in text
    assert "--ops-port <int>" in text and "(0<=x<=65535)" in text
    assert "--shutdown-seconds <float>" in text and "[default: 10.0]" in text


def test_the_help_shows_types_choices_and_defaults() -> None:
    dns = " ".join(runner.invoke(app, ["dns", "--help"]).stdout.split())
    watcher = " ".join(runner.invoke(app, ["watcher", "--help"]).stdout.split())

    assert "--answer-metrics <member|cluster|off>" in dns
    assert "--log-queries <bool>" in dns and "[default: true]" in dns
    assert "--dns-port <int>" in dns and "[default: 1053]" in dns
    assert "--home <bool>" in watcher


@pytest.mark.parametrize(
    ("words", "offered"),
    [
        ("kgslb dns --answer", ["--answer-metrics"]),
        ("kgslb dns --answer-metrics ", ["member", "cluster", "off"]),
        ("kgslb watcher --home ", ["true", "false"]),
        ("kgslb reconciler --lease", ["--lease-ttl-seconds"]),
        ("kgslb health --probe-s", ["--probe-source"]),
    ],
)
def test_shell_completion_offers_the_service_flags_and_their_values(
    words: str, offered: list[str]
) -> None:
    env = {
        "_KGSLB_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
    }
    result = runner.invoke(app, [], env=env, prog_name="kgslb")

    assert result.exit_code == 0
    assert result.stdout.split() == offered
