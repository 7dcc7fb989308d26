"""`create -d virtualbox dev` through the core against the fakes, in a process of its own,
so that a fault test can kill it -9 at a stage, or pause it there while another command runs.

    python -m tests.faults.child_create WORLD STAGE ACTION

WORLD is the folder the test's fake world lives in (see world_env); STAGE is the title of
a progress step; ACTION is "kill" (SIGKILL itself when the step starts), "kill-after"
(when it ends), or "pause" (write WORLD/paused, then wait until WORLD/resume exists).
MachineErrors are printed as the CLI prints them: one `Error:` line, exit status 1.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from pymachine.cli.output import error
from pymachine.errors import MachineError
from pymachine.home import Home
from pymachine.machines import CreateOptions, Machines
from pymachine.progress import RecordingProgress
from pymachine.runner import Runner

from ..fakes import vbox_model
from ..fakes.guest import GuestFarm
from ..fakes.vbox_model import FakeVirtualBox
from ..test_fake_end_to_end import docker_host_port

OPTIONS = CreateOptions(driver="virtualbox", cpus=1, memory_mb=512, disk_mb=2048, driver_options={"backend": "vboxmanage"}, force=True)


class StageProgress(RecordingProgress):
    """Does ACTION when the step STAGE starts (or ends, for kill-after)."""

    def __init__(self, world: Path, stage: str, action: str) -> None:
        super().__init__()
        self.world, self.stage, self.action = world, stage, action

    def on_step_start(self, title: str) -> None:
        super().on_step_start(title)
        if title.startswith(self.stage):
            if self.action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.action == "pause":
                (self.world / "paused").write_text(str(os.getpid()))
                while not (self.world / "resume").exists():
                    time.sleep(0.05)

    def on_step_end(self, title: str, seconds: float, ok: bool) -> None:
        super().on_step_end(title, seconds, ok)
        if title.startswith(self.stage) and self.action == "kill-after":
            os.kill(os.getpid(), signal.SIGKILL)


def main(world: Path, stage: str, action: str) -> int:
    fake = FakeVirtualBox(world / "vbox.json")
    runner = Runner(path=str(world / "bin"), env={vbox_model.STATE_ENV: str(fake.path)})
    farm = GuestFarm(fake.forward_works, lambda name: docker_host_port(fake, name))
    home = Home(world / "home", runner=runner, progress=StageProgress(world, stage, action), cache=world / "cache", ssh_factory=farm.connect)
    try:
        Machines(home).create("dev", OPTIONS)
    except MachineError as exc:
        error(str(exc))
        return 1
    finally:
        farm.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))
