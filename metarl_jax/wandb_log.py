"""The optional Weights & Biases mirror of :class:`metarl_jax.metrics_log.MetricsLog` (``wandb`` is imported only
here, and only when a run asks for it)."""

from __future__ import annotations

import os
from collections.abc import Mapping


class WandbRun:
    """The optional Weights & Biases mirror of a :class:`MetricsLog` (``wandb`` imported only here): one wandb run per
    workdir, its id kept in ``<workdir>/wandb_run_id`` so that a resume continues it, its files in ``<workdir>/wandb``."""

    def __init__(self, workdir: str, project: str, mode: str = "offline"):
        try:
            import wandb
        except ImportError as e:
            raise ImportError("wandb logging is on (config.wandb.project) but wandb is not installed: pip install "
                              "wandb, or set config.wandb.project=''") from e
        self._wandb = wandb
        id_path = os.path.join(workdir, "wandb_run_id")
        if os.path.exists(id_path):
            with open(id_path) as f:
                run_id = f.read().strip()
        else:
            import uuid

            run_id = uuid.uuid4().hex[:12]
            with open(id_path + ".tmp", "w") as f:
                f.write(run_id + "\n")
            os.replace(id_path + ".tmp", id_path)
        self.run = wandb.init(project=project, mode=mode, dir=workdir, id=run_id, resume="allow",
                              name=os.path.basename(os.path.abspath(workdir)),
                              settings=wandb.Settings(console="off", quiet=True, save_code=False))

    def log(self, values: Mapping[str, float | int], step: int) -> None:
        self.run.log(dict(values), step=step)

    def text(self, texts: Mapping[str, str], step: int) -> None:
        import html

        self.run.log({tag: self._wandb.Html(f"<pre>{html.escape(value)}</pre>") for tag, value in texts.items()},
                     step=step)

    def config(self, values: Mapping[str, bool | int | float | str]) -> None:
        self.run.config.update(dict(values), allow_val_change=True)

    def finish(self) -> None:
        self.run.finish()
