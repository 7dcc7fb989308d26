"""`python -m iso lock` pins the packages; `python -m iso build [DIR]` builds into DIR.

Users run `pymachine image build`, which calls the same builder.
"""

from __future__ import annotations

import sys
from pathlib import Path

from machine.errors import MachineError
from machine.runner import Runner

from .build import ImageBuilder, make_lock


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["lock"]:
            text = make_lock(Runner())
            print(f"pinned {len(text.splitlines()) - 2} packages in iso/packages.lock")
            return 0
        if argv[:1] == ["build"] and len(argv) <= 2:
            out = Path(argv[1]) if len(argv) == 2 else Path.cwd() / "build"
            artifacts = ImageBuilder(out, out / "work").build()
            for kind, item in sorted(artifacts.manifest["artifacts"].items()):
                print(f"{kind}: {out / item['file']}")
            return 0
    except MachineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("usage: python -m iso lock | python -m iso build [DIR]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
