"""Render an overlay of deploy/ with optional components added, as an operator does by listing
them under `components:` in the overlay (docs/operations.md): a throw-away kustomization
beside the repository that names the overlay and the components, with the overlays'
namespace."""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from pathlib import Path

import yaml

from tests.unit.test_deploy import DEPLOY, Manifest, kubectl

COMPONENTS = DEPLOY / "components"


@functools.cache
def render_with(overlay: str, *components: str) -> tuple[Manifest, ...]:
    with tempfile.TemporaryDirectory(prefix="kgslb-overlay-") as directory:
        root = Path(directory)

        def relative(path: Path) -> str:
            return os.path.relpath(path, root)

        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": "kgslb-system",
            "resources": [relative(DEPLOY / "overlays" / overlay)],
            "components": [relative(COMPONENTS / c) for c in components],
        }
        (root / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        result = subprocess.run(
            [kubectl(), "kustomize", str(root)], capture_output=True, text=True, timeout=60
        )
    names = " + ".join((f"overlays/{overlay}", *(f"components/{c}" for c in components)))
    assert result.returncode == 0, f"kubectl kustomize {names}:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind_in(docs: tuple[Manifest, ...], kind: str) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] == kind]


def named_in(docs: tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    matches = [doc for doc in of_kind_in(docs, kind) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}"
    return matches[0]
