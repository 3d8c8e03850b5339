"""What we promise people who install us into their own environment: ranges,
not pins, for the run time; exact pins only where reproducibility belongs (the
constraints files CI and the README's test command use)."""

from __future__ import annotations

import configparser
import re

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from conftest import ROOT

CFG = configparser.ConfigParser()
CFG.read(ROOT / "setup.cfg")


def _requirements(section: str, key: str) -> list[Requirement]:
    return [Requirement(line) for line in CFG[section][key].strip().splitlines() if line.strip()]


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            pkg, _, ver = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", pkg).lower()] = ver
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_run_time_requirements_are_ranges_not_pins():
    for req in _requirements("options", "install_requires"):
        ops = {spec.operator for spec in req.specifier}
        assert ops and not ops & {"==", "===", "~="}, f"{req} pins a version"
        assert ">=" in ops, f"{req} states no tested lower bound"


def test_python_3_12_and_3_13_are_admitted():
    spec = SpecifierSet(CFG["options"]["python_requires"])
    for v in ("3.11", "3.12", "3.13"):
        assert spec.contains(v), f"python_requires {spec} refuses {v}"


def test_the_lower_bounds_are_the_versions_ci_runs_with():
    lowest = _pins("constraints-lowest.txt")
    for req in _requirements("options", "install_requires"):
        floor = next(s.version for s in req.specifier if s.operator == ">=")
        assert lowest[_norm(req.name)] == floor, f"{req}: constraints-lowest.txt pins {lowest.get(_norm(req.name))}"


def test_every_test_and_fixture_requirement_is_pinned_in_constraints():
    pins = _pins("constraints.txt")
    for extra in ("test", "fixtures"):
        for req in _requirements("options.extras_require", extra):
            assert _norm(req.name) in pins, f"{req.name} ({extra}) is not pinned in constraints.txt"
            assert req.specifier.contains(pins[_norm(req.name)], prereleases=True)
    for req in _requirements("options", "install_requires"):
        assert req.specifier.contains(pins[_norm(req.name)]), f"{req} excludes the tested {pins[_norm(req.name)]}"
