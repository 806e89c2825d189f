"""One run directory, one run: stages and settings are not mixed unless --overwrite says so."""

from __future__ import annotations

import json
import logging

import pytest

from fer_ray.rundir import RECORD, RESULT, check_claim, claim, finish, finished, recorded, result


def test_a_rerun_with_the_same_settings_resumes_and_other_owners_are_refused(tmp_path):
    run = tmp_path / "run"
    assert claim(run, "train", {"model": "small_cnn", "epochs": 3}) == run.resolve()
    (run / "artifact").mkdir()
    claim(run, "train", {"model": "small_cnn", "epochs": 3})  # the same command again: resume
    assert (run / "artifact").is_dir()
    with pytest.raises(ValueError, match="holds a train run with different epochs, model"):
        claim(run, "train", {"model": "vgg16", "epochs": 5})
    with pytest.raises(ValueError, match="holds a train run; use another --run-dir, or pass --overwrite"):
        claim(run, "baseline", {"lambda": 0.5})
    assert json.loads((run / RECORD).read_text())["settings"]["epochs"] == 3  # refusals change nothing


def test_check_claim_answers_as_claim_would_and_writes_nothing(tmp_path):
    """What a stage asks before it starts Ray: the same refusals as claim, no folder made or cleared."""
    run = tmp_path / "run"
    assert check_claim(run, "train", {"epochs": 3}) is False and not run.exists()
    claim(run, "train", {"epochs": 3})
    (run / "artifact").mkdir()
    assert check_claim(run, "train", {"epochs": 3}) is False
    with pytest.raises(ValueError, match="holds a train run with different epochs"):
        check_claim(run, "train", {"epochs": 5})
    assert check_claim(run, "baseline", {}, overwrite=True) is True  # claim would clear it; this does not
    assert (run / "artifact").is_dir() and json.loads((run / RECORD).read_text())["settings"] == {"epochs": 3}


def test_overwrite_replaces_a_run_but_never_a_foreign_folder(tmp_path):
    run = tmp_path / "run"
    claim(run, "train", {"epochs": 3})
    (run / "artifact").mkdir()
    claim(run, "baseline", {"lambda": 0.5}, overwrite=True)
    assert not (run / "artifact").exists()
    assert json.loads((run / RECORD).read_text()) == {"stage": "baseline", "settings": {"lambda": 0.5}}

    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="not empty and holds no fer-ray run"):
            claim(mine, "train", {}, overwrite=overwrite)
    assert (mine / "notes").is_dir() and not (mine / RECORD).exists()
    (tmp_path / "empty").mkdir()
    claim(tmp_path / "empty", "train", {})  # an empty folder is fine


@pytest.mark.parametrize("text", ['{"stage": "tr', "[1, 2]", '{"stage": "train"}', "\xff\xfe"])
def test_a_damaged_run_record_is_refused_and_kept(tmp_path, text):
    """A truncated or hand-edited run.json was a JSONDecodeError/KeyError traceback; it is one
    clear error, and even --overwrite leaves the folder alone (its owner is unknown)."""
    run = tmp_path / "run"
    claim(run, "train", {"epochs": 3})
    (run / "artifact").mkdir()
    (run / RECORD).write_bytes(text.encode("latin-1"))
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=f"{RECORD} is damaged .*delete the folder yourself"):
            claim(run, "train", {"epochs": 3}, overwrite=overwrite)
    assert (run / "artifact").is_dir()


def test_a_finished_run_answers_a_rerun_with_its_result(tmp_path, caplog):
    """result.json, written last, is what "finished" means for every stage and the pipeline."""
    run = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="fer_ray")
    assert finished(run, "train", {"epochs": 3}) is None and not run.exists()
    claim(run, "train", {"epochs": 3})
    assert finished(run, "train", {"epochs": 3}) is None and result(run) is None  # resumes
    finish(run, {"artifact": "a", "evaluations": {"val": {"accuracy": 0.5}}})
    assert finished(run, "train", {"epochs": 3})["evaluations"]["val"]["accuracy"] == 0.5
    assert caplog.messages == [f"train: already finished ({run.resolve() / RESULT}; --overwrite to run it again)"]
    with pytest.raises(ValueError, match="holds a train run with different epochs"):
        finished(run, "train", {"epochs": 4})
    assert finished(run, "train", {"epochs": 4}, overwrite=True) is None  # runs again, from scratch
    assert not list(run.glob(".*.tmp"))  # written atomically


def test_keys_limit_what_a_rerun_may_not_change(tmp_path):
    run = tmp_path / "run"
    claim(run, "pipeline", {"epochs": 3, "gpu": False})
    claim(run, "pipeline", {"epochs": 3, "gpu": True}, keys=("epochs",))  # recorded anew
    assert recorded(run) == {"epochs": 3, "gpu": True}
    with pytest.raises(ValueError, match="--storage .* holds a pipeline run with different epochs; .*another --storage"):
        claim(run, "pipeline", {"epochs": 4, "gpu": True}, keys=("epochs",), flag="--storage")
    assert recorded(tmp_path / "none") is None
