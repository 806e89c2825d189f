"""Every folder a fer-ray command fills is opened with ``open_run``, so that resuming and
refusing mean the same thing everywhere.

A run (``stage`` and ``settings`` given: ``train``, ``baseline``, ``sweep``, ``ensemble``, the
demo, the pipeline's work directory and its ``scores/``, ``score``'s ``OUT.parts/``):

- ``claim`` records the owner and its settings in ``run.json``. Any other owner, or the same
  stage with other settings, is refused (a rerun that changed one would mix two runs); the same
  stage with the same settings passes, which is how an interrupted run resumes. ``overwrite``
  clears a folder that holds a fer-ray run, never one that holds anything else.
- ``finish`` writes the run's summary to ``result.json``, last: its presence is what "finished"
  means. A rerun of a finished run is answered with it (``done``) instead of running again, and
  ``result`` lets the pipeline read a stage's figures without knowing its file layout.

A folder written whole each time (no ``stage``: a catalog, an ``evaluate`` report) records
nothing; it must be new or empty, unless ``overwrite``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path

from fer_ray.errors import FerRayError

RECORD = "run.json"
RESULT = "result.json"
LOCK = ".lock"
log = logging.getLogger(__name__)


@contextmanager
def open_run(path: str | Path, stage: str | None = None, settings: dict | None = None, *, overwrite: bool = False,
             keys=None, flag: str = "--run-dir", lock: str | None = None, aside: bool = False):
    """``path`` as a ``Run`` for the ``with`` block: opening it refuses what the folder cannot
    take (before a stage starts Ray: at once) and answers a finished run (``done``, logged), and
    writes nothing until ``claim``.

    ``settings`` shape the results; ``keys``, when given, are those a rerun may not change (the
    others are recorded anew); ``flag`` names the option that chose the folder. ``lock`` names
    the job (``"scoring job"``) two of which may not write the folder at once: the block holds a
    ``flock`` on it (released by the kernel even when the process is killed). ``aside``: the
    block writes ``run.path``, a hidden folder beside ``path`` that replaces it if the block ends
    without an error and is deleted if not, so a failed build never loses the old folder.
    """
    path = Path(path).resolve()
    with _locked(path, lock) if lock else nullcontext():
        run = Run(path, stage, settings, overwrite, keys, flag, aside)
        try:
            yield run
        except BaseException:
            if aside:
                shutil.rmtree(run.path, ignore_errors=True)
            raise
        if aside and run.path.is_dir():
            if path.exists():
                shutil.rmtree(path)
            run.path.rename(path)


class Run:
    """A stage's hold on its folder (see ``open_run``)."""

    def __init__(self, path: Path, stage: str | None, settings: dict | None, overwrite: bool, keys, flag: str,
                 aside: bool = False):
        self.stage, self.settings = stage, settings
        self.clear = _check(path, stage, settings, overwrite, keys, flag)  # claim empties it first
        self.done = None if self.clear or stage is None else result(path)
        if self.done is not None:
            log.info(f"{stage}: already finished ({path / RESULT}; --overwrite to run it again)")
        self.path = path
        if aside:  # a killed build's leftovers are cleared
            self.path, self.clear = path.with_name(f".{path.name}.partial"), True

    def claim(self) -> Path:
        """Make the folder this run's (creating it) and return it: when the stage is about to
        write, after the checks that may still refuse it (e.g. Ray's resources), so a refused
        run leaves no folder behind and ``overwrite`` has deleted nothing."""
        if self.clear and self.path.is_dir():
            for entry in self.path.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                elif entry.name != LOCK:  # held by this very run
                    entry.unlink()
        self.clear = False
        self.path.mkdir(parents=True, exist_ok=True)
        if self.stage is not None:
            _write_json(self.path / RECORD, {"stage": self.stage, "settings": _as_stored(self.settings)})
        return self.path

    def finish(self, summary: dict) -> dict:
        """Write the run's summary as ``result.json`` (atomically): the run is finished."""
        _write_json(self.path / RESULT, summary)
        return summary


def _check(path: Path, stage: str | None, settings: dict | None, overwrite: bool, keys, flag: str) -> bool:
    """Raise the refusal the folder calls for; True when claiming it would clear it (``overwrite``
    of a fer-ray run)."""
    if not (path.is_dir() and any(not p.name.startswith(".") for p in path.iterdir())):
        return False  # new, or empty but for hidden files (a lock, a killed write's temporary file)
    if stage is None:
        if overwrite:
            return False
        raise FerRayError(f"{flag} {path} exists and is not empty; use another folder, or pass --overwrite "
                          "to write over it")
    old = _read_record(path, flag)
    if overwrite:
        return True
    if old["stage"] != stage:
        raise FerRayError(f"{flag} {path} holds a {old['stage']} run; use another {flag}, "
                          "or pass --overwrite to replace it")
    differ = changed(old["settings"], settings, keys)
    if differ:
        raise FerRayError(f"{flag} {path} holds a {stage} run with different {', '.join(differ)}; "
                          f"rerun with the same settings (an unfinished run resumes), use another "
                          f"{flag}, or pass --overwrite to replace it")
    return False


@contextmanager
def _locked(path: Path, job: str):
    path.mkdir(parents=True, exist_ok=True)
    with open(path / LOCK, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FerRayError(f"another {job} is writing {path}") from None
        for stale in path.glob(".*.tmp"):  # a killed job's unfinished write (write_atomic)
            stale.unlink()
        yield


def result(run_dir: str | Path) -> dict | None:
    """A finished run's summary, or None while it has not finished."""
    path = Path(run_dir) / RESULT
    return json.loads(path.read_text()) if path.is_file() else None


def recorded(run_dir: str | Path) -> dict | None:
    """The settings ``run.json`` holds, or None where no run was claimed."""
    path = Path(run_dir).resolve()
    return _read_record(path, "--run-dir")["settings"] if (path / RECORD).is_file() else None


def changed(old: dict, new: dict, keys=None) -> list[str]:
    """The settings (``keys``, or every key of either) whose recorded value in ``old`` differs
    from ``new``'s, compared as JSON holds them."""
    old, new = _as_stored(old), _as_stored(new)
    return sorted(k for k in (set(old) | set(new) if keys is None else keys) if old.get(k) != new.get(k))


def _as_stored(settings: dict) -> dict:
    return json.loads(json.dumps(settings, default=str))  # as run.json holds them: tuples become lists


def write_atomic(path: Path, write) -> None:
    """``write(tmp)`` to a hidden name beside ``path``, flushed to disk, then renamed to ``path``:
    a reader, a resumed job or a process killed part-way sees the old file or the whole new one,
    never a torn one."""
    tmp = temporary(path)
    write(tmp)
    replace_synced(tmp, path)


def temporary(path: Path) -> Path:
    """The hidden name beside ``path`` that ``write_atomic`` writes first."""
    return path.with_name(f".{path.name}.tmp")


def replace_synced(tmp: Path, path: Path) -> None:
    """``tmp``, flushed to disk, renamed to ``path``."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str)))


def _read_record(path: Path, flag: str) -> dict:
    """run.json as written by ``claim``; a damaged one is refused, not guessed at (nor cleared)."""
    record = path / RECORD
    if not record.is_file():
        raise FerRayError(f"{flag} {path} is not empty and holds no fer-ray run (no {RECORD}: another "
                          "program's files, or a run from a fer-ray before run directories recorded "
                          "their owner, which cannot be resumed in place); use a new or empty folder")
    try:
        old = json.loads(record.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        old = exc
    if not (isinstance(old, dict) and isinstance(old.get("stage"), str) and isinstance(old.get("settings"), dict)):
        raise FerRayError(f"{record} is damaged ({old if isinstance(old, Exception) else 'not a run record'}); "
                          "delete the folder yourself or use another --run-dir")
    return old
