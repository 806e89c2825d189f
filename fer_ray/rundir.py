"""A run directory holds one run: one stage with one set of settings.

Every folder a fer-ray command fills goes through this module: the run directories of
``train``, ``baseline``, ``sweep`` and ``ensemble``, ``score``'s ``OUT.parts/`` and the
pipeline's work directory (and its ``scores/``). So resuming means the same thing everywhere:

- ``claim`` records the owner and its settings in ``run.json`` and refuses any other owner, or
  the same stage with other settings (a rerun that changed one would mix two runs); the same
  stage with the same settings passes, which is how an interrupted run resumes. ``overwrite``
  clears a folder that holds a fer-ray run, never one that holds anything else.
- ``finish`` writes the run's summary to ``result.json``, last: its presence is what "finished"
  means. ``finished`` answers a rerun with that summary instead of running again, and
  ``result`` lets the pipeline read a stage's figures without knowing its file layout.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from fer_ray.errors import FerRayError

RECORD = "run.json"
RESULT = "result.json"
log = logging.getLogger(__name__)


def claim(run_dir: str | Path, stage: str, settings: dict, overwrite: bool = False, keys=None,
          flag: str = "--run-dir") -> Path:
    """Make ``run_dir`` this run's (creating it) and return its absolute path, or raise ValueError.

    ``settings`` are those that shape the results; ``keys``, when given, are the ones a rerun
    may not change (the others are recorded anew). ``flag`` names the option that chose the
    folder, for the error message.
    """
    path = Path(run_dir).resolve()
    if check_claim(path, stage, settings, overwrite, keys, flag):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    _write_json(path / RECORD, {"stage": stage, "settings": _as_stored(settings)})
    return path


def check_claim(run_dir: str | Path, stage: str, settings: dict, overwrite: bool = False, keys=None,
                flag: str = "--run-dir") -> bool:
    """Raise the ValueError ``claim`` would raise, writing nothing; True when ``claim`` would
    clear the folder (``overwrite`` of a fer-ray run). A stage asks this before it starts Ray,
    so that a rerun with other settings is refused at once, not after Ray's start."""
    path = Path(run_dir).resolve()
    if not (path.is_dir() and any(not p.name.startswith(".") for p in path.iterdir())):
        return False  # new, or empty but for hidden files (score's lock)
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


def finished(run_dir: str | Path, stage: str, settings: dict, overwrite: bool = False) -> dict | None:
    """The summary of this very run if it already finished (logged as such), else None; other
    settings or another owner are refused as ``claim`` refuses them. Asked first, before Ray."""
    if check_claim(run_dir, stage, settings, overwrite):
        return None  # --overwrite: it runs again
    done = result(run_dir)
    if done is not None:
        log.info(f"{stage}: already finished ({Path(run_dir).resolve() / RESULT}; --overwrite to run it again)")
    return done


def finish(run_dir: str | Path, summary: dict) -> dict:
    """Write the run's summary as ``result.json`` (atomically): the run is finished."""
    _write_json(Path(run_dir) / RESULT, summary)
    return summary


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
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
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
