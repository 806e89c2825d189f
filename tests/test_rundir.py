"""One run directory, one run: stages and settings are not mixed unless --overwrite says so."""

from __future__ import annotations

import json
import logging

import pytest

from fer_ray.errors import FerRayError
from fer_ray.rundir import LOCK, RECORD, RESULT, open_run, recorded, result


def claim(path, stage, settings, **options):
    """Open the folder and claim it, as a stage that is about to write does."""
    with open_run(path, stage, settings, **options) as run:
        return run.claim()


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


def test_opening_refuses_at_once_and_writes_nothing_until_the_claim(tmp_path):
    """What a stage asks before it starts Ray: the same refusals as the claim, no folder made or cleared."""
    run = tmp_path / "run"
    with open_run(run, "train", {"epochs": 3}) as opened:
        assert opened.done is None and not run.exists()
    claim(run, "train", {"epochs": 3})
    (run / "artifact").mkdir()
    with pytest.raises(ValueError, match="holds a train run with different epochs"):
        with open_run(run, "train", {"epochs": 5}):
            pytest.fail("a refused run's block ran")
    with open_run(run, "baseline", {}, overwrite=True):
        pass  # refused later (say, for lack of CPUs): nothing was cleared
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
    caplog.set_level(logging.INFO, logger="fer_ray")
    run = tmp_path / "run"
    with open_run(run, "train", {"epochs": 3}) as opened:
        opened.claim()
        assert opened.done is None and result(run) is None  # unfinished: it resumes
        opened.finish({"artifact": "a", "evaluations": {"val": {"accuracy": 0.5}}})
    with open_run(run, "train", {"epochs": 3}) as again:
        assert again.done["evaluations"]["val"]["accuracy"] == 0.5
    assert caplog.messages == [f"train: already finished ({run.resolve() / RESULT}; --overwrite to run it again)"]
    with pytest.raises(ValueError, match="holds a train run with different epochs"):
        with open_run(run, "train", {"epochs": 4}):
            pass
    with open_run(run, "train", {"epochs": 4}, overwrite=True) as afresh:
        assert afresh.done is None  # runs again, from scratch
    assert not list(run.glob(".*.tmp"))  # written atomically


def test_keys_limit_what_a_rerun_may_not_change(tmp_path):
    run = tmp_path / "run"
    claim(run, "pipeline", {"epochs": 3, "gpu": False})
    claim(run, "pipeline", {"epochs": 3, "gpu": True}, keys=("epochs",))  # recorded anew
    assert recorded(run) == {"epochs": 3, "gpu": True}
    with pytest.raises(ValueError, match="--storage .* holds a pipeline run with different epochs; .*another --storage"):
        claim(run, "pipeline", {"epochs": 4, "gpu": True}, keys=("epochs",), flag="--storage")
    assert recorded(tmp_path / "none") is None


def test_a_folder_written_whole_must_be_new_or_empty_unless_overwrite(tmp_path):
    """An evaluate report: nothing recorded, an earlier one not written over by accident."""
    out = tmp_path / "report"
    with open_run(out, flag="--output") as report:
        report.claim()
        (out / "report.md").write_text("first")
    with pytest.raises(FerRayError, match="--output .* exists and is not empty; .*pass --overwrite"):
        with open_run(out, flag="--output"):
            pass
    with open_run(out, overwrite=True, flag="--output") as report:
        assert report.done is None and report.claim() == out.resolve()
    assert (out / "report.md").read_text() == "first" and not (out / RECORD).exists()  # written over, not cleared


def test_a_folder_built_aside_replaces_the_old_one_only_when_complete(tmp_path):
    """A catalog: a failed build leaves the old folder as it was, and no hidden build behind."""
    out = tmp_path / "catalog"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="the build failed"):
        with open_run(out, overwrite=True, aside=True) as build:
            (build.claim() / "half.txt").write_text("half")
            raise RuntimeError("the build failed")
    assert [p.name for p in tmp_path.iterdir()] == ["catalog"] and (out / "old.txt").read_text() == "old"
    with open_run(out, overwrite=True, aside=True) as build:
        assert build.path != out.resolve()
        (build.claim() / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]


def test_a_locked_run_refuses_a_second_writer_and_keeps_its_lock_on_overwrite(tmp_path):
    parts = tmp_path / "out.parquet.parts"
    with open_run(parts, "score", {"tta": "none"}, lock="scoring job") as run:
        run.claim()
        (parts / "part-000000.parquet").write_bytes(b"rows")
        with pytest.raises(FerRayError, match="another scoring job is writing"):
            with open_run(parts, "score", {"tta": "none"}, overwrite=True, lock="scoring job"):
                pass
    assert (parts / "part-000000.parquet").read_bytes() == b"rows"
    (parts / ".part-000001.parquet.tmp").write_bytes(b"a killed job's half-written part")
    with open_run(parts, "score", {"tta": "flip"}, overwrite=True, lock="scoring job") as run:
        assert not (parts / ".part-000001.parquet.tmp").exists()
        run.claim()
        assert sorted(p.name for p in parts.iterdir()) == [LOCK, RECORD]
