"""How a watcher is pointed at its cluster, and the `kgslb kube-sim` VIP pool flag."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
import yaml

from kgslb.cli import parse_vip_pools
from services.watcher.kube import KubeConfigError, load_api_client
from services.watcher.service import WatcherSettings, cluster_name


@pytest.fixture
def kubeconfig(tmp_path: Path) -> str:
    path = tmp_path / "gslb-members"
    contexts = ["s1az1", "s1az2", "s2"]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": c, "cluster": {"server": f"http://127.0.0.1:{16443 + i}"}}
                    for i, c in enumerate(contexts)
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": c, "context": {"cluster": c, "user": "u"}} for c in contexts],
                "current-context": "s1az2",
            }
        )
    )
    return str(path)


def test_the_cluster_is_named_after_the_context(kubeconfig: str) -> None:
    assert cluster_name(WatcherSettings(kubeconfig=kubeconfig, context="s2")) == "s2"


def test_cluster_overrides_the_context_name(kubeconfig: str) -> None:
    settings = WatcherSettings(kubeconfig=kubeconfig, context="s2", cluster="site2")
    assert cluster_name(settings) == "site2"


def test_without_a_context_the_current_context_is_used(kubeconfig: str) -> None:
    assert cluster_name(WatcherSettings(kubeconfig=kubeconfig)) == "s1az2"


def test_in_cluster_config_needs_a_cluster_name() -> None:
    with pytest.raises(KubeConfigError, match="needs --cluster"):
        cluster_name(WatcherSettings())


def test_the_client_targets_the_contexts_server(kubeconfig: str) -> None:
    api = load_api_client(kubeconfig, "s2")
    try:
        assert api.configuration.host == "http://127.0.0.1:16445"
    finally:
        api.close()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    ("kubeconfig_path", "context", "message"),
    [
        ("/nonexistent/gslb-members", "s1az1", "no such file"),
        (None, "nope", "context 'nope'"),
    ],
)
def test_an_unusable_kubeconfig_is_named_in_the_error(
    kubeconfig: str, kubeconfig_path: str | None, context: str, message: str
) -> None:
    with pytest.raises(KubeConfigError, match=message):
        load_api_client(kubeconfig_path or kubeconfig, context)


def test_vip_pools_parse_per_cluster_and_a_cluster_may_repeat() -> None:
    pools = parse_vip_pools(
        ["s1az1=127.10.25.46,s2=127.10.23.40", "s1az1=127.10.25.47"], ["s1az1", "s2"]
    )
    assert pools == {"s1az1": ["127.10.25.46", "127.10.25.47"], "s2": ["127.10.23.40"]}


@pytest.mark.parametrize("spec", ["s9=127.0.0.1", "s1az1", "s1az1=not-an-ip"])
def test_a_bad_vip_pool_entry_is_refused(spec: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_vip_pools([spec], ["s1az1"])
