"""Training logs to TensorBoard, Weights & Biases and Trackio (``--log-to tensorboard,wandb,trackio``).

``metrics.jsonl`` stays the source of truth: the trainer appends each row there first, then hands the
same row to every tracker here -- the same keys (``loss``, ``lr``, ``tokens_per_s``, ``tokens``,
``params``) at the same step (the row's ``step`` is the x axis, not a logged value). Only rank 0 of a
``torchrun`` job logs.

Backends (each an extra: ``pip install 'firepe[tensorboard]'``, ``[wandb]``, ``[trackio]``; each
package is imported only when asked for):

- ``tensorboard``: ``torch.utils.tensorboard.SummaryWriter`` writing ``RUN/tensorboard``; a resumed
  run purges the events past its checkpoint, so steps continue without duplicates.
- ``wandb``: ``wandb.init(project, name=<run folder name>, group, dir=RUN, config=<config.json>)``.
  The run id is kept in ``RUN/tracking.json``, so ``--resume`` continues the same W&B run.
  ``WANDB_MODE=offline`` logs without a network into ``RUN/wandb`` (``wandb sync`` uploads later).
- ``trackio``: ``trackio.init(project, name, group, config)``, local by default (a SQLite database
  per project under ``$TRACKIO_DIR``, default ``~/.cache/huggingface/trackio``; ``trackio show``).
  Trackio resumes a run by name: ``--resume`` continues the newest Trackio run with the run folder's
  name in the project.

A tracker that cannot start is an error before the first step (one ``ValueError`` sentence); one
that fails later is dropped with one warning and training goes on (``metrics.jsonl`` and the
checkpoints never depend on a tracker).
"""

from __future__ import annotations

import importlib
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import TRACKERS, parse_log_to
from .runs import error_line, read_json, refuse_link, write_json

__all__ = ["Tracker", "TrackerRun", "Trackers", "BACKENDS", "check_installed", "open_trackers"]


@dataclass
class TrackerRun:
    """What a tracker needs to know about the run it logs."""

    run_dir: Path
    project: str = "firepe"
    name: str | None = None  # default: the run folder's name
    group: str | None = None  # compare/ablate: the comparison folder's name
    config: dict[str, Any] | None = None  # the run's config.json
    resumed: bool = False  # --resume: continue the tracker's run
    step: int = 0  # the step training starts from (rows <= step are already logged)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.name = self.name or self.run_dir.resolve().name


class Tracker:
    """One backend: ``log(metrics, step)`` for each ``metrics.jsonl`` row, ``close()`` at the end."""

    #: the module imported to use the backend, and the pip extra that installs it
    package = ""
    extra = ""

    def __init__(self, run: TrackerRun):
        self.run = run

    def log(self, metrics: dict[str, Any], step: int) -> None:
        raise NotImplementedError

    def close(self, failed: bool = False) -> None:
        """Flush and finish the tracker's run (``failed``: training stopped with an error)."""


class TensorBoardTracker(Tracker):
    """Scalars in ``RUN/tensorboard`` (``tensorboard --logdir RUN`` or the comparison folder)."""

    package = extra = "tensorboard"

    def __init__(self, run: TrackerRun):
        super().__init__(run)
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run restarts after its checkpoint: hide events a killed process logged past it
        purge = run.step + 1 if run.resumed else None
        refuse_link(run.run_dir / "tensorboard")
        self.writer = SummaryWriter(log_dir=str(run.run_dir / "tensorboard"), purge_step=purge)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, float(value), global_step=step)
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    """A W&B run per run folder; its id is kept in ``RUN/tracking.json`` so that ``--resume``
    continues it. ``WANDB_MODE=offline`` works without a network."""

    package = extra = "wandb"

    def __init__(self, run: TrackerRun):
        super().__init__(run)
        import wandb

        path = run.run_dir / "tracking.json"
        saved = read_json(path) if path.exists() else {}
        saved = saved if isinstance(saved, dict) else {}
        entry = saved.get("wandb")
        run_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(run_id, str) or not run_id:
            run_id = secrets.token_hex(8)
            write_json(path, {**saved, "wandb": {"id": run_id}})
        self.wandb_run = wandb.init(project=run.project, name=run.name, group=run.group, dir=str(run.run_dir),
                                    config=run.config, id=run_id, resume="allow",
                                    settings=wandb.Settings(console="off"))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.wandb_run.log(dict(metrics), step=step)

    def close(self, failed: bool = False) -> None:
        self.wandb_run.finish(exit_code=1 if failed else 0)


class TrackioTracker(Tracker):
    """A Trackio run, stored locally by default (``$TRACKIO_DIR``); resumed by name on ``--resume``."""

    package = extra = "trackio"

    def __init__(self, run: TrackerRun):
        super().__init__(run)
        import trackio

        self.trackio_run = trackio.init(project=run.project, name=run.name, group=run.group, config=run.config,
                                        resume="allow" if run.resumed else "never", embed=False)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.trackio_run.log(dict(metrics), step=step)

    def close(self, failed: bool = False) -> None:
        import trackio

        current = getattr(getattr(trackio, "context_vars", None), "current_run", None)
        if current is not None and current.get() is self.trackio_run:
            trackio.finish()  # also forgets it, so that trackio does not finish it again at exit
        else:
            self.trackio_run.finish()


#: ``--log-to`` names -> backends
BACKENDS: dict[str, type[Tracker]] = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker,
                                      "trackio": TrackioTracker}
assert tuple(BACKENDS) == TRACKERS  # the names --log-to accepts (firepe.config)

def _names(log_to: str | None) -> list[str]:
    canonical = parse_log_to(log_to)
    return canonical.split(",") if canonical else []


def check_installed(log_to: str | None) -> None:
    """ValueError (one sentence naming the backend and its pip extra) unless every backend of
    ``log_to`` can be imported. Called before anything is written to a run folder."""
    for name in _names(log_to):
        cls = BACKENDS[name]
        try:
            importlib.import_module(cls.package)
        except ImportError:
            raise ValueError(f"--log-to {name} needs the {cls.package} package, which is not installed; "
                             f"install it with pip install 'firepe[{cls.extra}]' (or pass --log-to none).") from None
        except Exception as e:  # a broken install (e.g. a protobuf version clash)
            cause = error_line(e)
            raise ValueError(f"--log-to {name}: the {cls.package} package cannot be imported ({cause}); "
                             f"reinstall it with pip install 'firepe[{cls.extra}]' (or pass --log-to none).") from None


_START_HINTS = {"wandb": "; run `wandb login`, or set WANDB_MODE=offline to log without a network"}


class Trackers:
    """The open trackers of one training run: :meth:`log` each metrics row, :meth:`close` at the end.

    A tracker whose ``log`` raises is closed and dropped with one warning; training goes on.
    """

    def __init__(self, trackers: dict[str, Tracker] | None = None):
        self.trackers = dict(trackers or {})

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def log(self, row: dict[str, Any]) -> None:
        """Log a ``metrics.jsonl`` row: every key but ``step`` at step ``row["step"]``."""
        step = row["step"]
        metrics = {k: v for k, v in row.items() if k != "step"}
        for name, tracker in list(self.trackers.items()):
            try:
                tracker.log(metrics, step)
            except Exception as e:
                del self.trackers[name]
                cause = error_line(e)
                warnings.warn(f"firepe: logging to {name} failed at step {step} ({cause}); training goes on "
                              "without it (metrics.jsonl and the checkpoints are unaffected).", RuntimeWarning,
                              stacklevel=2)
                _quiet_close(name, tracker, failed=True)

    def close(self, failed: bool = False) -> None:
        """Finish every tracker (errors while finishing only warn)."""
        trackers, self.trackers = self.trackers, {}
        for name, tracker in trackers.items():
            _quiet_close(name, tracker, failed)


def _quiet_close(name: str, tracker: Tracker, failed: bool) -> None:
    try:
        tracker.close(failed)
    except Exception as e:
        cause = error_line(e)
        warnings.warn(f"firepe: could not close the {name} log ({cause}).", RuntimeWarning, stacklevel=3)


def open_trackers(log_to: str | None, run: TrackerRun) -> Trackers:
    """Start the trackers ``log_to`` names for ``run``; ValueError (after closing the ones already
    started) when one cannot start."""
    opened: dict[str, Tracker] = {}
    for name in _names(log_to):
        check_installed(name)
        try:
            opened[name] = BACKENDS[name](run)
        except Exception as e:
            Trackers(opened).close(failed=True)
            cause = error_line(e).rstrip(".")
            raise ValueError(f"--log-to {name} could not start ({cause}){_START_HINTS.get(name, '')}; nothing "
                             "was trained (continue the run with --resume once fixed).") from None
    return Trackers(opened)
