"""Ray Tune's ``OptunaSearch`` whose saved state names its Optuna storage by address.

Tune pickles the search algorithm with the experiment (``tuner.pkl``, ``searcher-state-*``):
Ray's ``OptunaSearch`` pickles its live storage, so a resumed study kept writing to the
journal file (or database) of its first run, and one whose journal had moved (with the Tune
storage, or by hand) wrote to a new, empty journal at the old path. Here the saved state holds
the storage's address (a journal path or an RDB URL) and each Tune trial's Optuna trial id;
a resumed study binds them to the storage its command line names (:meth:`relocate`), and a
study run straight through to the one it was built with.
"""

from __future__ import annotations

import pickle

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray.tune.search.optuna import OptunaSearch


def storage_address(storage):
    """A journal file's path or an RDB URL (what a storage is saved as); other storages
    are kept as they are."""
    if isinstance(storage, JournalStorage) and isinstance(storage._backend, JournalFileBackend):
        return storage._backend._file_path
    return storage


def storage_at(address):
    """The storage at ``address`` (:func:`storage_address`'s inverse)."""
    if isinstance(address, str) and "://" not in address:
        return JournalStorage(JournalFileBackend(address))
    return address


class RelocatableOptunaSearch(OptunaSearch):
    """See the module docstring. Unpickled, it is bound to no storage until it is used
    (the address it was saved with) or relocated (the resuming command's)."""

    def relocate(self, storage) -> None:
        """Use ``storage`` from now on, also once Tune restores the saved state into it."""
        self.__dict__["_relocated"] = storage
        self._bind(storage)

    # -- saved state: addresses and ids, never live storage objects -------------------------

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_relocated", None)
        state["_ot_trial_ids"] = self._trial_ids()
        state["_storage"] = storage_address(state.get("_storage"))
        state["_ot_study"], state["_ot_trials"] = None, {}
        return state

    def __setstate__(self, state: dict) -> None:
        if state.get("_ot_study") is not None:  # saved by Ray's OptunaSearch (live objects)
            state = {
                **state,
                "_ot_trial_ids": {k: t._trial_id for k, t in state["_ot_trials"].items()},
            }
            state.update(_storage=storage_address(state["_storage"]), _ot_study=None, _ot_trials={})
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        relocated = self.__dict__.get("_relocated")
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)  # noqa: S301 - Tune's own state, as Ray's OptunaSearch reads it
        self.__setstate__(state)  # unbound: the saved trial ids, the saved address
        self._bind(relocated if relocated is not None else storage_at(self._storage))

    # -- binding ----------------------------------------------------------------------------

    def _trial_ids(self) -> dict:
        if self.__dict__.get("_ot_study") is None:
            return dict(self.__dict__.get("_ot_trial_ids") or {})
        return {k: t._trial_id for k, t in self._ot_trials.items()}

    def _bind(self, storage) -> None:
        ids = self._trial_ids()
        study = optuna.load_study(
            study_name=self._study_name,
            storage=storage,
            sampler=self._sampler or optuna.samplers.TPESampler(seed=self._seed),
            pruner=optuna.pruners.NopPruner(),
        )
        self._storage, self._ot_study = storage, study
        self._ot_trials = {k: optuna.trial.Trial(study, i) for k, i in ids.items()}
        self.__dict__.pop("_ot_trial_ids", None)

    def _ensure_bound(self) -> None:
        if self.__dict__.get("_ot_study") is None and self._storage is not None:
            self._bind(storage_at(self._storage))

    def suggest(self, trial_id: str):
        self._ensure_bound()
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._ensure_bound()
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        self._ensure_bound()
        super().on_trial_complete(trial_id, result, error)

    def add_evaluated_point(self, *args, **kwargs) -> None:
        self._ensure_bound()
        super().add_evaluated_point(*args, **kwargs)
