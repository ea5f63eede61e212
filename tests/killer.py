"""A Lightning callback for the crash tests: SIGKILL its own process once, right after a given training step."""

import os
import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self.marker.exists():
            self.marker.write_text(str(self.step))  # once: the rerun of the same command must get through
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no warning: as the OOM killer or a pre-emption
