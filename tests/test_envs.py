"""Environments: conda envs carry the pins of requirements.txt, and every rule has a log and an env."""

from __future__ import annotations

import re

import yaml

from .conftest import REPO


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
