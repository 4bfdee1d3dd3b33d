"""Where a search keeps its trials: SQLite in the work dir by default, or any Optuna RDB URL (PostgreSQL for many
workers). Passwords never leave this module unmasked: everything logged or written uses :func:`mask_url`.
"""

from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path

from proxy_bundle.atomic import ensure_dir
from proxy_bundle.errors import InputError

__all__ = ["default_url", "mask_text", "mask_url", "open_storage", "resolve_url"]

MASK = "***"
# scheme://user:password@host... ; the password may contain anything but '@' and '/'.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@/\s]*)(?P<tail>@)")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)(?P<pw>[^&\s]*)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db`` (also ``?password=``)."""
    out = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + m["tail"], url)
    return _QUERY_PASSWORD.sub(lambda m: m["head"] + MASK, out)


def mask_text(text: str, url: str | None) -> str:
    """Mask every password-looking URL part in ``text`` and the literal password of ``url`` wherever it appears."""
    out = mask_url(text)
    if url:
        for pattern in (_URL_PASSWORD, _QUERY_PASSWORD):
            for m in pattern.finditer(url):
                if m["pw"]:
                    out = out.replace(m["pw"], MASK)
    return out


def default_url(work_dir: str | os.PathLike) -> str:
    """SQLite file ``<work_dir>/hpo/study.db`` (absolute, so workers started elsewhere find the same file)."""
    db = ensure_dir(Path(work_dir).resolve() / "hpo") / "study.db"
    return f"sqlite:///{db}"


def resolve_url(storage: str | None, work_dir: str | os.PathLike) -> str:
    """The RDB URL to use: ``storage`` as given, a bare file path as SQLite, or :func:`default_url`."""
    if storage is None or str(storage).strip() == "":
        return default_url(work_dir)
    storage = str(storage).strip()
    if "://" not in storage:
        # A path: treat as an SQLite file, which is what a user passing "study.db" means.
        return f"sqlite:///{Path(storage).resolve()}"
    scheme = storage.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme not in ("sqlite", "postgresql", "postgres", "mysql", "oracle", "mssql"):
        raise InputError(f"unsupported storage URL scheme {scheme!r}; use sqlite:///FILE or postgresql://...",
                         where=mask_url(storage))
    if scheme == "postgres":
        storage = "postgresql" + storage[len("postgres"):]
    return storage


def open_storage(url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 heartbeat_stale_trial_callback=None):
    """An ``optuna.storages.RDBStorage`` for ``url``; connection failures become a one-line masked error.

    ``heartbeat_interval``/``grace_period`` (seconds) and ``heartbeat_stale_trial_callback`` are Optuna's: a RUNNING
    trial without a heartbeat for ``grace_period`` is failed by ``optuna.storages.fail_stale_trials`` and handed to
    the callback (e.g. ``RetryHeartbeatStaleTrialCallback``)."""
    import optuna
    import sqlalchemy.exc

    engine_kwargs: dict = {}
    if url.startswith("sqlite"):
        # Several local workers may share the file: wait for the lock instead of failing at once.
        engine_kwargs["connect_args"] = {"timeout": 120}
        path = url.split(":///", 1)[1].split("?", 1)[0] if ":///" in url else ""
        if path and path != ":memory:":
            ensure_dir(Path(path).parent)
    else:
        engine_kwargs["pool_pre_ping"] = True
    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                                              grace_period=grace_period,
                                              heartbeat_stale_trial_callback=heartbeat_stale_trial_callback)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as err:
            if isinstance(err, sqlalchemy.exc.OperationalError) and "already exists" not in str(err):
                return _raise_masked(err, url)
            # Workers starting together on an empty database race to create Optuna's schema; the loser
            # sees a duplicate table/type and simply retries against the now complete schema.
            if attempt == 5:
                return _raise_masked(err, url)
            time.sleep(0.2 + random.random() * (attempt + 1))
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as err:
            return _raise_masked(err, url)
    raise AssertionError("unreachable")


def _raise_masked(err: BaseException, url: str):
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    raise InputError(f"cannot open storage: {mask_text(reason, url)}", where=mask_url(url)) from None
