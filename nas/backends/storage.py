"""Where an Optuna study lives: the run dir's own SQLite file, a journal file, or a database server several
machines share (PostgreSQL, MySQL). `make_storage` turns a --storage URL into an Optuna storage with heartbeats
(so a dead process's trials are failed and re-run) and, on a database server, patience: a restart of the
server or a network blip makes workers wait and go on, for up to DATABASE_WAIT_S, instead of failing the search.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import random
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy

from nas.backends.asha import RESUME_OF, ROOT
from nas.errors import NasError

HEARTBEAT_S, GRACE_S = 5, 20
# how long workers wait for a database server that went away, before giving up (NAS_DATABASE_WAIT_S overrides)
DATABASE_WAIT_S = float(os.environ.get("NAS_DATABASE_WAIT_S", "120"))
_log = logging.getLogger("nas")


with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    _RETRY = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)


def retry_dead_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a trial whose process died again, with the same params (at most 3 times). Its user attrs stay
    behind: the retry must not inherit an outcome it has not earned, nor a dead owner."""
    again = copy.deepcopy(trial)
    again.user_attrs = {k: v for k, v in trial.user_attrs.items() if k in (RESUME_OF, ROOT)}  # still a continuation
    _RETRY(study, again)


class DatabaseAway(NasError):
    """The study's database server stayed unreachable past DATABASE_WAIT_S."""


def _unreachable(exc: BaseException) -> bool:
    """An error that means the server is away (restart, network), not that the request was wrong. Optuna wraps
    SQLAlchemy's errors during a commit in StorageInternalError."""
    while exc is not None:
        if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
            return True
        exc = exc.__cause__  # type: ignore[assignment]
    return False


def first_line(exc: BaseException) -> str:
    """The driver's own words ("connection refused"), not the wrappers' around them."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _patient(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: PatientStorage, *args: Any, **kwargs: Any) -> Any:
        began = None
        while True:
            try:
                result = method(self, *args, **kwargs)
            except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
                if not _unreachable(exc):
                    raise
                now = time.monotonic()
                if self.gave_up:  # waited once in vain already: the search is on its way out, do not wait again
                    raise DatabaseAway(self.gave_up) from None
                if began is None:
                    began = now
                    _log.warning("the study's database %s is unreachable; waiting up to %.0f s for it",
                                 redact(self.url), self.wait_s)
                if now - began > self.wait_s:
                    self.gave_up = (
                        f"the study's database {redact(self.url)} has been unreachable for {self.wait_s:.0f} s "
                        f"({first_line(exc)}); every finished trial is kept there. Start "
                        "the database server again, then rerun the same command to resume")
                    raise DatabaseAway(self.gave_up) from None
                time.sleep(min(5.0, 0.5 * 2 ** min(int(now - began), 3)))
                continue
            if began is not None:
                self.recovered_at = time.monotonic()
                _log.warning("the study's database is back after %.0f s", self.recovered_at - began)
            return result

    return call


class PatientStorage(optuna.storages.RDBStorage):
    """RDBStorage on a database server, whose every call waits for the server to come back (bounded by
    `wait_s`) instead of failing: a restart of PostgreSQL loses nothing and stops nothing. A call is retried
    only when it never reached the server or its connection broke, which a restart does to whole
    transactions; Optuna's writes are single transactions, so none is applied twice in practice."""

    wait_s = DATABASE_WAIT_S
    recovered_at = -float("inf")  # when this process last saw the database come back
    gave_up = ""  # why it stopped waiting for the database, once it has

    def record_heartbeat(self, trial_id: int) -> None:
        # Optuna's heartbeat thread: waits like every call, but never ends in a traceback of its own. When the
        # database stays away, the trial's own calls end the search with the message.
        try:
            _beat(self, trial_id)
        except Exception as exc:
            _log.debug("heartbeat of trial %s not recorded: %s", trial_id, exc)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # Nobody could beat while the database was away: right after it is back, every running trial looks dead.
        # Judge none until each process has had time to record a heartbeat again.
        if time.monotonic() - self.recovered_at < GRACE_S + 2 * HEARTBEAT_S:
            return []
        return list(_stale_ids(self, study_id))


for _name in ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
              "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
              "get_study_system_attrs", "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies",
              "create_new_trial", "set_trial_param", "get_trial_param", "set_trial_state_values",
              "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
              "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials", "get_best_trial",
              # the private ones Optuna's own cache layer calls directly
              "_create_new_trial", "_get_best_trial_id", "_get_trials", "_set_trial_param"):
    setattr(PatientStorage, _name, _patient(getattr(optuna.storages.RDBStorage, _name)))
_stale_ids = _patient(optuna.storages.RDBStorage._get_stale_trial_ids)
_beat = _patient(optuna.storages.RDBStorage.record_heartbeat)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _database_url(url: str) -> str:
    """`postgresql://...` with the driver nas installs (psycopg 3; SQLAlchemy's default would be psycopg2), and a
    clear message when no driver is there. An explicit `postgresql+driver://` is left as it is."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None:
        raise NasError(f"--storage {redact(url)}: PostgreSQL's driver (psycopg) is not installed; run "
                       "`pip install 'nas[postgres]'`")
    return "postgresql+psycopg://" + url.removeprefix("postgresql://")


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _created(make: Callable[[], optuna.storages.RDBStorage], attempts: int = 6) -> optuna.storages.RDBStorage:
    """The storage, when machines that start together on an empty database all create Optuna's tables at once:
    PostgreSQL refuses all but one CREATE TABLE (a duplicate key in pg_type) or version row. By the next try the
    tables are there, and Optuna creates only what is missing."""
    for attempt in range(attempts):
        try:
            return make()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)
    raise AssertionError("unreachable")


def make_storage(url: str) -> optuna.storages.BaseStorage:
    url = _database_url(url)
    if url.startswith(("sqlite:", "postgresql", "mysql")):
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9; nas relies on them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kind = optuna.storages.RDBStorage if url.startswith("sqlite:") else PatientStorage
            storage = _created(functools.partial(
                kind, url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                heartbeat_stale_trial_callback=retry_dead_trial,
                engine_kwargs={"connect_args": {"timeout": 30}} if url.startswith("sqlite:") else
                # a pooled connection that a database restart cut is replaced, not handed out broken
                {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}},
            ))
        if url.startswith("sqlite:"):
            # SQLite's default (a rollback journal, fsync on every commit) made Optuna's dozen commits per trial
            # cost ~290 ms on a busy disk; WAL with synchronous=NORMAL ~130 ms. A killed process loses nothing
            # committed (only a power cut can lose the last commits), and readers (`nas status`, the dashboard)
            # no longer block the search's writes.
            sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
            storage.engine.dispose()  # connections opened before the listener are reopened with it
        return storage
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    raise NasError(f"--storage {url!r}: expected an Optuna storage URL (sqlite:///path.db, postgresql://..., "
                   "mysql://...) or journal:<file>; fix the URL")


