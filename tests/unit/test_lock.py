"""The lock: every package pyproject.toml asks for (extras included) is pinned in
requirements.lock at a version its bounds allow, and both ways of installing kgslb (make, the
image) install through it, so two installs a week apart are the same."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        texts += extra
    requirements = [Requirement(text) for text in texts]
    return [r for r in requirements if canonicalize_name(r.name) != "kgslb"]


def pins() -> dict[str, str]:
    pinned: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, pinned_version = line.partition("==")
        assert pinned_version, f"requirements.lock: {line!r} is not NAME==VERSION"
        pinned[canonicalize_name(name)] = pinned_version.strip()
    return pinned


def test_every_declared_package_is_pinned_within_its_bounds() -> None:
    locked = pins()
    problems = []
    for requirement in declared():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        pinned = locked.get(canonicalize_name(requirement.name))
        if pinned is None:
            problems.append(f"{requirement.name}: not in requirements.lock (run `make lock`)")
        elif not requirement.specifier.contains(pinned, prereleases=True):
            problems.append(f"{requirement.name}=={pinned} is outside {requirement.specifier}")
    assert problems == []


def test_every_declared_package_has_lower_and_upper_bounds() -> None:
    unbounded = [
        str(r) for r in declared()
        if not any(s.operator in (">=", ">", "==", "~=") for s in r.specifier)
        or not any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier)
    ]  # fmt: skip
    assert unbounded == []


def test_this_environment_has_the_locked_versions_of_the_declared_packages() -> None:
    """What `make` installed is what the lock says (a venv installed before a lock change
    is rebuilt by make, as the lock is a prerequisite of its stamp)."""
    locked = pins()
    differing = []
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            continue  # an extra this environment does not install (analysis)
        if name in locked and installed != locked[name]:
            differing.append(f"{requirement.name}: installed {installed}, locked {locked[name]}")
    assert differing == []


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        ("Makefile", r"pip install -q -c \$\(LOCK\) -e '\.\[dev\]'"),
        ("Dockerfile", r"pip install --no-compile -c requirements\.lock \."),
        (".dockerignore", r"^!requirements\.lock$"),
    ],
)
def test_make_and_the_image_install_through_the_lock(path: str, pattern: str) -> None:
    assert re.search(pattern, (ROOT / path).read_text(), re.MULTILINE)


def test_the_image_base_is_pinned_by_digest() -> None:
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert bases and all(re.fullmatch(r"[\w./:-]+@sha256:[0-9a-f]{64}", b) for b in bases)
