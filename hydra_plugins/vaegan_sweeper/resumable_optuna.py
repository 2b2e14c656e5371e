"""Hydra's Optuna sweeper, made resumable (``conf/hparams_search/optuna.yaml`` selects it).

With a ``storage``, running the same sweep command again continues the study instead of starting
``n_trials`` new ones: ``n_trials`` counts the study's finished trials, trials left RUNNING by a
sweep that was killed are marked FAIL (so the sampler stops waiting on them and the report shows
them), the sampler's random stream is reseeded by the number of trials so far (so it does not draw
the interrupted sweep's first points again), and job directories are numbered after the existing ones, so nothing already written is
overwritten. One sweep process per study: a second one running at the same time would see the
first one's trials as stale.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

try:  # hydra-optuna-sweeper is optional (pip install 'vaegan[sweeps]')
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # pragma: no cover - without the extra, this plugin is simply absent
    OptunaSweeper = None

log = logging.getLogger(__name__)


def sqlite_path(storage: Any) -> Path | None:
    """The database file of a ``sqlite:///path`` storage URL (relative to the working directory)."""
    prefix = "sqlite:///"
    return Path(storage[len(prefix):]) if isinstance(storage, str) and storage.startswith(prefix) else None


def reseed(sampler: Any, seed: int) -> None:
    """Gives a sampler (and TPE's inner random sampler) a new deterministic random stream: a resumed
    study would otherwise draw the same first points as the interrupted one did."""
    import numpy as np

    for obj in (sampler, getattr(sampler, "_random_sampler", None)):
        if obj is not None and hasattr(obj, "_rng"):  # optuna's samplers keep their stream in _rng
            obj._rng = np.random.RandomState(seed)


def resume_study(storage: str, study_name: str | None, n_trials: int) -> tuple[int, int]:
    """Marks the study's stale RUNNING trials FAIL; returns (trials still to run, first job number)."""
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no such study yet
        return n_trials, 0
    trials = study.get_trials(deepcopy=False)
    for trial in trials:
        if trial.state == TrialState.RUNNING:
            study._storage.set_trial_state(trial._trial_id, TrialState.FAIL)
            log.warning(f"Optuna study {study_name!r}: trial {trial.number} was left running by an interrupted "
                        "sweep; marked FAIL")
    done = sum(t.state == TrialState.COMPLETE for t in trials)
    if done:
        log.info(f"Optuna study {study_name!r} resumed: {done} of {n_trials} trials done, "
                 f"{max(0, n_trials - done)} to go")
    return max(0, n_trials - done), len(trials)


if OptunaSweeper is not None:

    class ResumableOptunaSweeper(OptunaSweeper):
        """``OptunaSweeper`` whose study resumes from its storage (see the module docstring)."""

        def sweep(self, arguments: list[str]) -> None:
            impl = self.sweeper
            if impl.storage is not None:
                if (db := sqlite_path(impl.storage)) is not None:
                    db.parent.mkdir(parents=True, exist_ok=True)
                impl.n_trials, impl.job_idx = resume_study(impl.storage, impl.study_name, impl.n_trials)
                if impl.job_idx:
                    reseed(impl.sampler, impl.job_idx)
            return super().sweep(arguments)
