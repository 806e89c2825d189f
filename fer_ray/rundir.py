"""A run directory holds one run: one stage with one set of settings.

``train``, ``baseline``, ``sweep`` and ``ensemble`` write an artifact, metrics and reports
under ``--run-dir``. Pointing a second run at the same folder used to replace them silently
(a baseline over a trained CNN, a second lambda over the first SVM). ``claim`` records the
owner in ``run.json`` and refuses any other owner; the same stage with the same settings
passes, which is how an interrupted train run or sweep resumes. ``overwrite`` clears a folder
that holds a fer-ray run, never one that holds anything else.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

RECORD = "run.json"


def claim(run_dir: str | Path, stage: str, settings: dict, overwrite: bool = False) -> Path:
    """Make ``run_dir`` this run's (creating it) and return its absolute path, or raise ValueError.

    ``settings`` are those that shape the results: a rerun that changes one would mix two runs.
    """
    path = Path(run_dir).resolve()
    if check_claim(path, stage, settings, overwrite):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / RECORD).write_text(json.dumps({"stage": stage, "settings": _as_stored(settings)}, indent=2))
    return path


def check_claim(run_dir: str | Path, stage: str, settings: dict, overwrite: bool = False) -> bool:
    """Raise the ValueError ``claim`` would raise, writing nothing; True when ``claim`` would
    clear the folder (``overwrite`` of a fer-ray run). A stage asks this before it starts Ray,
    so that a rerun with other settings is refused at once, not after Ray's start."""
    path = Path(run_dir).resolve()
    record = path / RECORD
    if not (path.is_dir() and any(path.iterdir())):
        return False
    if not record.is_file():
        raise ValueError(f"--run-dir {path} is not empty and holds no fer-ray run (no {RECORD}: another "
                         "program's files, or a run from a fer-ray before run directories recorded "
                         "their owner, which cannot be resumed in place); use a new or empty folder")
    old = _read_record(record)
    if overwrite:
        return True
    if old["stage"] != stage:
        raise ValueError(f"--run-dir {path} holds a {old['stage']} run; use another --run-dir, "
                         "or pass --overwrite to replace it")
    differ = changed(old["settings"], settings)
    if differ:
        raise ValueError(f"--run-dir {path} holds a {stage} run with different {', '.join(differ)}; "
                         "rerun with the same settings (an unfinished run resumes), use another "
                         "--run-dir, or pass --overwrite to replace it")
    return False


def changed(old: dict, new: dict, keys=None) -> list[str]:
    """The settings (``keys``, or every key of either) whose recorded value in ``old`` differs
    from ``new``'s, compared as JSON holds them: the one rule every resume guard applies."""
    old, new = _as_stored(old), _as_stored(new)
    return sorted(k for k in (set(old) | set(new) if keys is None else keys) if old.get(k) != new.get(k))


def _as_stored(settings: dict) -> dict:
    return json.loads(json.dumps(settings, default=str))  # as run.json holds them: tuples become lists


def _read_record(record: Path) -> dict:
    """run.json as written by ``claim``; a damaged one is refused, not guessed at (nor cleared)."""
    try:
        old = json.loads(record.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        old = exc
    if not (isinstance(old, dict) and isinstance(old.get("stage"), str) and isinstance(old.get("settings"), dict)):
        raise ValueError(f"{record} is damaged ({old if isinstance(old, Exception) else 'not a run record'}); "
                         "delete the folder yourself or use another --run-dir")
    return old
