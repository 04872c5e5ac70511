"""Where a run's own numbers go: TensorBoard, Weights & Biases, or nowhere (`report_to`).

TRL's trainers log their training curves themselves (`report_to` is passed on to them); what no
trainer sees is the loop around them: the boundary score and its interval, the data source each
iteration chose, win rates, reward and KL. The pipeline hands every finished stage's result to
one `Tracker`, which writes its numbers as ``<stage>/<key>`` (nested keys joined by ``/``) per
iteration, the same tags in every backend. Kept out of the pipeline so that a backend is added
here alone, and so that the loop never imports a tracking library.

    tracker = Tracker.open(run_dir, cfg.report_to, cfg)   # a no-op tracker for "none" and on ranks > 0
    tracker.log("measure", 1, {"bs": 0.41, "lo": 0.33, "hi": 0.49, "decision": "static"})
    tracker.close()

W&B: the run is created in the process that runs the loop, so TRL's `WandbCallback` (which only
creates a run when none is active) logs its training curves into the same run. The loop's tags
go under ``loop/`` there (``loop/measure/bs``), because TRL's own ``train/*`` keys share the run
and would otherwise mix with the train stage's; they are logged without an explicit W&B step
(the trainers advance it) and plotted against ``iteration``. Project: ``$WANDB_PROJECT``
(default ``stagealign``); files under ``$WANDB_DIR`` as W&B decides; ``WANDB_MODE=offline``
works without an account.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Result keys that are not per-iteration numbers: per-prompt detail and TRL's step log.
SKIPPED = ("per_prompt", "log_history")
#: Config keys whose values are never sent to a tracking service: names ending in key, token, secret or
#: password (`api_key_env` names a variable and may go; `max_new_tokens` is no token).
_SECRET_KEY = re.compile(r"(?i)(^|_)(api_?key|key|token|secret|password|passwd)$")
WANDB_MISSING = "report_to: wandb needs the wandb package: pip install 'stagealign[wandb]'"


def scalars(result: Mapping[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """(tag, value) of every number in a stage result, nested keys joined by ``/``; booleans,
    strings, private keys (``_seconds``) and `SKIPPED` keys are left out."""
    out: list[tuple[str, float]] = []
    for key, v in result.items():
        if key.startswith("_") or key in SKIPPED or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out.append((prefix + key, float(v)))
        elif isinstance(v, Mapping):
            out.extend(scalars(v, prefix + key + "/"))
    return out


def labels(result: Mapping[str, Any]) -> dict[str, str]:
    """The top-level strings of a stage result (the data source chosen, the stage decision):
    TensorBoard has no place for them, W&B shows them in its run table."""
    return {k: v for k, v in result.items() if isinstance(v, str) and not k.startswith("_")}


def public_config(config: Any) -> dict[str, Any]:
    """The run config as a plain dict for a tracking service, with secret-looking values masked."""
    if config is None:
        return {}
    data = config.model_dump(mode="json") if hasattr(config, "model_dump") else dict(config)

    def clean(node: Any) -> Any:
        if isinstance(node, Mapping):
            return {k: "***" if _SECRET_KEY.search(str(k)) and v is not None else clean(v) for k, v in node.items()}
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    return clean(data)


class Tracker:
    """Receives each finished stage's result; this base class drops them (``report_to: none``)."""

    @staticmethod
    def open(run_dir: Any, report_to: str, config: Any = None) -> "Tracker":
        """The tracker `report_to` names, for the run in `run_dir` (a `RunDir` or its path).

        Only the main process of a multi-process launch tracks; the others get the no-op one.
        """
        from stagealign import distributed

        if report_to == "none" or not distributed.is_main():
            return Tracker()
        if report_to == "tensorboard":
            from stagealign.rundir import RunDir

            folder = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
            return TensorBoardTracker(folder.tensorboard_dir)
        if report_to == "wandb":
            root = Path(run_dir.root if hasattr(run_dir, "root") else run_dir)
            name = str(root) if not root.is_absolute() else "/".join(root.parts[-4:])  # a grid cell's 4 levels
            return WandbTracker(name=name, config=public_config(config))
        raise ValueError(f"report_to: unknown tracker {report_to!r} (none, tensorboard or wandb)")

    def log(self, stage: str, iteration: int, result: Mapping[str, Any]) -> None:
        """Record `result`, the result of `stage` in iteration `iteration`."""

    def close(self, failed: bool = False) -> None:
        """Flush and finish; `failed` marks the run as crashed where the backend can show it."""

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


class TensorBoardTracker(Tracker):
    """Scalars as TensorBoard events in one folder (``tensorboard --logdir RUN_DIR``)."""

    def __init__(self, folder: str | os.PathLike):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def log(self, stage: str, iteration: int, result: Mapping[str, Any]) -> None:
        for tag, value in scalars(result):
            self.writer.add_scalar(f"{stage}/{tag}", value, iteration)

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    """One W&B run: TensorBoard's tags and the stages' labels under `SECTION`, against ``iteration``."""

    SECTION = "loop/"

    def __init__(self, name: str, config: Mapping[str, Any] | None = None, project: str | None = None):
        try:
            import wandb
        except ImportError:
            raise ImportError(WANDB_MISSING) from None
        self.run = wandb.init(project=project or os.environ.get("WANDB_PROJECT", "stagealign"), name=name,
                              config=dict(config or {}), job_type="stagealign")
        self.run.define_metric("iteration")
        self.run.define_metric(f"{self.SECTION}*", step_metric="iteration")  # not against W&B's own step

    def log(self, stage: str, iteration: int, result: Mapping[str, Any]) -> None:
        head = f"{self.SECTION}{stage}/"
        row: dict[str, Any] = {head + tag: value for tag, value in scalars(result)}
        row.update({head + key: text for key, text in labels(result).items()})
        self.run.log({"iteration": iteration, **row})

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


__all__ = ["SKIPPED", "TensorBoardTracker", "Tracker", "WandbTracker", "labels", "public_config", "scalars"]
