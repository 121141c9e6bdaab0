"""Environments: conda envs carry the pins of requirements.txt, and every rule has a log and an env."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from importlib.metadata import packages_distributions, requires
from pathlib import Path

import pytest
import yaml
from dpmedbench.core.digest import module_closure, module_file, script_modules
from dpmedbench.core.names import PLAN_MODULES

from ..conftest import REPO, clone

# Packages an env may pin though no code imports them: what pandas needs for DataFrame.to_markdown.
OPTIONAL_AT_RUNTIME = {"tabulate": "pandas DataFrame.to_markdown (results/tables/*.md)"}


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if m := re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line):
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_requirements_are_all_pinned():
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (REPO / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            assert not line or line.startswith("-r ") or "==" in line, f"{name}: unpinned {line!r}"
    pins = _pins((REPO / "requirements.txt").read_text().splitlines())
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.2"
    for pkg in ("snakemake", "opacus", "numpy", "pillow", "pandas", "seaborn"):
        assert pkg in pins, pkg
    assert pins["snakemake"].startswith("9.")


def test_conda_envs_match_requirements():
    required = _pins((REPO / "requirements.txt").read_text().splitlines())
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert envs
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        deps = spec["dependencies"]
        pip = next((d["pip"] for d in deps if isinstance(d, dict) and "pip" in d), [])
        pins = _pins(pip)
        assert pins, f"{env.name} pins nothing"
        for pkg, version in pins.items():
            assert required.get(pkg) == version, (
                f"{env.name}: {pkg}=={version}, requirements.txt says {required.get(pkg)}"
            )
        assert any(isinstance(d, str) and d.startswith("python=3.11") for d in deps), env.name


def _rules():
    for smk in [*sorted((REPO / "workflow" / "rules").glob("*.smk")), REPO / "Snakefile"]:
        for block in re.split(r"\n(?=rule )", smk.read_text()):
            if m := re.match(r"rule (\w+):", block):
                yield smk.name, m.group(1), block


def test_every_rule_has_a_log_and_a_conda_env():
    rules = list(_rules())
    assert {name for _, name, _ in rules} >= {"all", "fetch", "prepare"}
    for file, name, block in rules:
        if name == "all":
            continue
        assert "\n    log:" in block, f"{file}: rule {name} has no log"
        m = re.search(r'\n    conda:\n        "([^"]+)"', block)
        assert m, f"{file}: rule {name} has no conda env"
        assert (REPO / "workflow" / "rules" / m.group(1)).resolve().exists(), f"{name}: {m.group(1)} missing"


def test_scripts_do_not_read_snakemake_config():
    for script in (REPO / "workflow" / "scripts").glob("*.py"):
        assert "snakemake.config" not in script.read_text(), f"{script.name} reads config directly; use params"


def _norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _third_party_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in ("__future__", "dpmedbench")}


def _distributions_needed(script: Path) -> set[str]:
    """Distributions whose modules a rule's script can import: its own imports and those of every package
    module it reaches (imports inside functions included). ``snakemake`` is not needed in the env: Snakemake
    puts its own installation on the script's path."""
    modules = _third_party_imports(script)
    reached = script_modules(script)
    if "training.plans" in module_closure(
        *reached
    ):  # plans are imported by name, one per mechanism: all of them can run
        reached += list(PLAN_MODULES.values())
    for name in module_closure(*reached):
        modules |= _third_party_imports(module_file(name))
    owners = packages_distributions()
    return {_norm(owners.get(m, [m])[0]) for m in modules} - {"snakemake"}


def test_each_conda_env_has_what_its_rules_import_and_little_else():
    needed: dict[str, set[str]] = {}
    for _, name, block in _rules():
        if name == "all":
            continue
        env = re.search(r'\n    conda:\n        "\.\./\.\./envs/([^"]+)"', block).group(1)
        script = re.search(r'\n    script:\n        "\.\./scripts/([^"]+)"', block).group(1)
        missing = _distributions_needed(REPO / "workflow" / "scripts" / script) - {_norm(p) for p in _env_pins(env)}
        assert not missing, f"rule {name} runs in envs/{env}, which lacks {sorted(missing)}"
        needed.setdefault(env, set()).update(_distributions_needed(REPO / "workflow" / "scripts" / script))
    for env, dists in needed.items():
        allowed = set(dists) | set(OPTIONAL_AT_RUNTIME)
        for dist in dists:  # what the needed packages themselves require may be pinned too
            allowed |= {_norm(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0]) for r in requires(dist) or []}
        extra = {_norm(p) for p in _env_pins(env)} - allowed
        assert not extra, f"envs/{env} pins {sorted(extra)}, which none of its rules uses"


def _env_pins(env: str) -> dict[str, str]:
    spec = yaml.safe_load((REPO / "envs" / env).read_text())
    pip = next((d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d), [])
    return _pins(pip)


def test_conda_envs_build_and_the_demo_runs_in_them(tmp_path):
    """The real thing, where conda exists: build every env and run the data stage of the demo in them."""
    conda = shutil.which("mamba") or shutil.which("conda")
    if conda is None:
        pytest.skip(
            "conda cannot be reached from these machines (no conda or mamba, and conda-forge is not among the "
            "package registries they reach); the envs are checked statically above"
        )
    workdir = clone(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "2",
            "--use-conda",
            "--configfile",
            "config/demo.yaml",
            "data/prepared/chest_xray/info.json",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
