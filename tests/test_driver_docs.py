"""docs/drivers.md lists every option of every driver, as `pymachine drivers` does."""

from __future__ import annotations

from pathlib import Path

import pytest

from pymachine.driver import Feature, driver_names, load_driver

DOC = Path(__file__).resolve().parent.parent / "docs" / "drivers.md"


@pytest.mark.parametrize("name", driver_names())
def test_every_option_is_documented_as_its_dataclass_says(name: str) -> None:
    text = DOC.read_text()
    assert f"## {name}" in text
    section = text.split(f"## {name}", 1)[1].split("\n## ", 1)[0]
    for option_name, default, help_text in load_driver(name).options_class.describe():
        row = f"| `-o {option_name}=...` | `{default or 'none'}` | {help_text} |"
        assert row in section, f"docs/drivers.md lacks, or has another version of: {row}"


def test_the_fake_tested_drivers_say_so() -> None:
    text = DOC.read_text()
    assert "**Tested against a faithful fake, not yet on a real VirtualBox.**" in text
    assert "**Tested against a faithful fake, not yet on a real Parallels.**" in text


@pytest.mark.parametrize("feature", list(Feature))
def test_the_feature_table_says_what_each_driver_declares(feature: Feature) -> None:
    table = DOC.read_text().split("| Feature |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    row = next((line for line in table if line.startswith(f"| {feature.value} ")), None)
    assert row is not None, f"docs/drivers.md has no row for {feature.value}"
    cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
    drivers = ["qemu", "virtualbox", "parallels"]
    said = {name: cell.split(",")[0] for name, cell in zip(drivers, cells)}
    assert said == {name: "yes" if load_driver(name).supports(feature) else "no" for name in drivers}
