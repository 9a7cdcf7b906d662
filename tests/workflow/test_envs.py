"""The per-rule conda environments pin exactly what requirements.txt pins."""

from __future__ import annotations

import re

import yaml
from conftest import REPO


def pins(lines):
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match:
            out[match.group(1).lower().replace("_", "-")] = match.group(2)
    return out


def test_env_files_match_requirements():
    required = pins((REPO / "requirements.txt").read_text().splitlines())
    assert required["torch"] == "2.14.1" and required["torchvision"] == "0.29.1"
    env_files = sorted((REPO / "envs").glob("*.yaml"))
    assert env_files
    for env_file in env_files:
        spec = yaml.safe_load(env_file.read_text())
        pip_lines = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
        env_pins = pins(pip_lines)
        unpinned = [p for p in pip_lines if "==" not in p and not p.startswith("-e")]
        assert not unpinned, f"{env_file.name}: unpinned {unpinned}"
        for name, version in env_pins.items():
            assert name in required, f"{env_file.name}: {name} is not in requirements.txt"
            assert version == required[name], (f"{env_file.name}: {name}=={version}, requirements.txt has "
                                               f"{required[name]}")
        assert "python=3.11" in spec["dependencies"]


def test_every_rule_names_an_environment_log_and_benchmark():
    for rule_file in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = rule_file.read_text()
        for block in re.split(r"\nrule ", "\n" + text)[1:]:
            name = block.split(":")[0]
            for directive in ("conda:", "log:", "benchmark:", "resources:"):
                assert directive in block, f"{rule_file.name}: rule {name} has no {directive}"
