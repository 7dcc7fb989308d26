"""docs/drivers.md lists every option of every driver, as `pymachine drivers` does."""

from __future__ import annotations

from pathlib import Path

import pytest

from machine.driver import driver_names, load_driver

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
