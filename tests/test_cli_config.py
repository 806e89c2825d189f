"""`--config FILE.yaml`: YAML supplies any flag (required ones too); explicit flags win."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from fer_ray.cli import parse_args


def test_yaml_supplies_flags_and_explicit_flags_win(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("catalog: cat\nrun-dir: runs/a\nmodel: vgg16_bn\nepochs: 7\nlabel_smoothing: 0.2\n")
    args = parse_args(["train", "--config", str(config), "--epochs", "9"])
    assert (args.catalog, args.run_dir, args.model, args.label_smoothing) == ("cat", "runs/a", "vgg16_bn", 0.2)
    assert args.epochs == 9
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text("storage: out\nmodels: [small_cnn, small_cnn]\ninput-sizes: {resnet50: 192}\n")
    args = parse_args(["pipeline", f"--config={pipeline}"])
    assert (args.storage, args.models, args.input_sizes) == ("out", ("small_cnn", "small_cnn"), {"resnet50": 192})


@pytest.mark.parametrize("text,message", [
    ("bogus: 1\n", "bogus (in"), ("- a\n- b\n", "mapping"), ("a: [1\n", "cannot read"),
    # values are checked as the flags' own would be (argparse checks no default)
    ('gpu: "false"\n', "gpu (in"),                        # a string would have switched --gpu on
    ("no_augment: 'no'\n", "must be true or false"),
    ("epochs: 2.5\n", "--epochs (in"),
    ("tta: tencrop2\n", "--tta (in"),                     # was refused only after the training run
    ("model: resnet5\n", "got 'resnet5'"),
    ("batch_size: [32, 64]\n", "--batch-size (in"),
])
def test_bad_yaml_is_a_clear_error(tmp_path, capsys, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(SystemExit) as exc:
        parse_args(["train", "--config", str(config), "--catalog", "c", "--run-dir", "r"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_the_parser_loads_without_torch():
    """Every command builds the whole parser first: torch there would delay each one by seconds."""
    code = "import sys; from fer_ray.cli import parse_args; parse_args(['score', '--artifact', 'a', " \
           "'--input', 'i', '--output', 'o.parquet']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("stage", [["prepare", "--source", "synthetic", "--output", "o"],
                                   ["score", "--artifact", "a", "--input", "i", "--output", "o.csv"],
                                   ["serve", "--artifact", "a"]])
@pytest.mark.parametrize("value", ["0", "-5", "lots"])
def test_max_pixels_must_be_a_positive_integer(stage, value, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args([*stage, "--max-pixels", value])
    assert exc.value.code == 2
    assert "--max-pixels" in capsys.readouterr().err
    assert parse_args([*stage, "--max-pixels", "1000"]).max_pixels == 1000


def test_the_cli_answers_a_stage_s_interruption_with_130_and_its_message(monkeypatch, tmp_path, capsys):
    """How `main` answers an ``Interrupted`` raised inside the pipeline (as the SVM sweep raises
    on Ctrl+C): exit 130 and the stage's own resume message. The sweep itself is interrupted for
    real by SIGINT in tests/test_sweeps.py, and the demo's pipeline in tests/test_demo.py."""
    from fer_ray.cli import main
    from fer_ray.pipeline import Pipeline
    from fer_ray.tuning.sweeps import SweepInterrupted

    def stopped(self):
        raise SweepInterrupted("sweep svm stopped with 2 of 4 trials finished; rerun the same command to resume")

    monkeypatch.setattr(Pipeline, "run", stopped)
    assert main(["pipeline", "--storage", str(tmp_path)]) == 130
    assert capsys.readouterr().err.startswith("fer-ray pipeline: sweep svm stopped with 2 of 4")


@pytest.mark.parametrize("flags,message", [
    (["--input-sizes", "resnet=192"], "--input-sizes names \\['resnet'\\]"),
    (["--input-sizes", "resnet50=0"], "--input-sizes must be at least 32"),
    (["--kdef", "no/such/KDEF"], "--kdef folder not found"),
    (["--score-input", "no/such/*.jpg"], "--score-input not found"),
])
def test_pipeline_settings_for_late_stages_are_checked_first(flags, message, tmp_path, capsys):
    from fer_ray.cli import main

    assert main(["pipeline", "--storage", str(tmp_path / "p"), "--models", "small_cnn", "resnet50", *flags]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "p").exists()  # nothing ran


def test_a_score_input_glob_is_checked_as_score_lists_it(tmp_path, capsys):
    """A glob that names only folders passed the pipeline's own check (glob.iglob), and the
    scores stage, its last, then found no file in it."""
    from fer_ray.cli import main

    (tmp_path / "photos" / "2024").mkdir(parents=True)
    assert main(["pipeline", "--storage", str(tmp_path / "p"), "--score-input", f"{tmp_path}/photos/*"]) == 2
    assert "--score-input not found" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["score", "--artifact", "a", "--input", "i", "--output", "o.csv", "--margin", "-1"],
    ["score", "--artifact", "a", "--input", "i", "--output", "o.csv", "--actors", "0"],
    ["score", "--artifact", "a", "--input", "i", "--output", "o.csv", "--part-files", "0"],
    ["baseline", "--catalog", "c", "--run-dir", "r", "--max-iter", "0"],
    ["score", "--artifact", "a", "--input", "i", "--output", "o.csv", "--num-cpus", "0"],  # hung for ever
    ["serve", "--artifact", "a", "--num-cpus", "0"],
    ["serve", "--artifact", "a", "--batch-wait-ms", "-5"],  # was a pydantic error naming internal fields
    ["serve", "--artifact", "a", "--replica-cpus", "-1"],
    ["serve", "--artifact", "a", "--max-files", "0"],
    ["serve", "--artifact", "a", "--max-batch-size", "0"],
    ["serve", "--artifact", "a", "--replicas", "0"],
    ["score", "--artifact", "a", "--input", "i", "--output", "o.csv", "--margin", "inf"],  # error row per photo
    ["score", "--artifact", "a", "--input", "i", "--output", "o.csv", "--batch-size", "0"],
    ["train", "--catalog", "c", "--run-dir", "r", "--input-size", "-3"],  # failed inside the workers
    ["train", "--catalog", "c", "--run-dir", "r", "--checkpoint-every", "0"],
    ["train", "--catalog", "c", "--run-dir", "r", "--cpus-per-worker", "0"],
    ["train", "--catalog", "c", "--run-dir", "r", "--epochs", "0"],
    ["prepare", "--source", "synthetic", "--output", "o", "--count", "0"],
    ["sweep", "cnn", "--catalog", "c", "--run-dir", "r", "--grace-period", "0"],
    ["pipeline", "--storage", "s", "--svm-samples", "0"],
    ["sweep", "cnn", "--catalog", "c", "--run-dir", "r", "--batch-sizes", "64.9", "128"],  # was truncated to 64
    ["pipeline", "--storage", "s", "--epochs", "0"],  # the parser refuses it before the pipeline checks
])
def test_nonsense_counts_and_margins_are_refused_by_the_parser(argv):
    from fer_ray.cli import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2


def test_an_output_folder_that_runs_into_a_file_is_refused_before_any_work(tmp_path, capsys):
    from fer_ray.cli import main

    afile = tmp_path / "afile"
    afile.write_text("hi")
    for argv in (["baseline", "--catalog", str(tmp_path / "missing"), "--run-dir", str(afile)],
                 ["train", "--catalog", str(tmp_path / "missing"), "--model", "small_cnn", "--run-dir", str(afile / "r")],
                 ["evaluate", "--artifact", str(tmp_path), "--catalog", str(tmp_path), "--output", str(afile)],
                 ["score", "--artifact", str(tmp_path), "--input", str(tmp_path), "--output", str(afile / "x.csv")],
                 # these were FileExistsError / NotADirectoryError tracebacks
                 ["pipeline", "--storage", str(afile)],
                 ["pipeline", "--storage", "s3://bucket/x", "--work-dir", str(afile / "work")],
                 ["demo", "--output", str(afile)]):
        assert main(argv) == 2
        assert f"{afile} is a file, not a folder" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """prepare failed after its 30 s of work, score after Ray's start. These tests run as root,
    for whom mode bits allow everything, so the folder is made unwritable where the check asks
    (os.access, which answers for read-only mounts and immutable folders even for root); the
    next test asks a real read-only mount where there is one."""
    import fer_ray.data.ingest as ingest
    from fer_ray.cli import main

    locked = tmp_path / "locked"
    (locked / "old-catalog").mkdir(parents=True)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: real_access(path, mode)
                        and not str(path).startswith(str(locked)))
    monkeypatch.setattr(ingest, "build_catalog", lambda *a, **k: pytest.fail("prepare started its work"))
    for argv in (["prepare", "--source", "synthetic", "--output", str(locked / "new" / "catalog")],
                 ["prepare", "--source", "synthetic", "--output", str(locked / "old-catalog"), "--overwrite"],
                 ["score", "--artifact", str(tmp_path), "--input", str(tmp_path), "--output", str(locked / "s.csv")],
                 ["baseline", "--catalog", str(tmp_path), "--run-dir", str(locked / "run")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"cannot write in {locked}" in err[0], err
    assert sorted(p.name for p in locked.iterdir()) == ["old-catalog"]


@pytest.mark.skipif(os.access("/proc/sys", os.W_OK), reason="no read-only mount here (/proc/sys is writable)")
def test_an_output_on_a_read_only_mount_is_refused_before_any_work(tmp_path, capsys):
    from fer_ray.cli import main

    for argv in (["prepare", "--source", "synthetic", "--output", "/proc/sys/fer-ray-catalog"],
                 ["score", "--artifact", str(tmp_path), "--input", str(tmp_path), "--output", "/proc/sys/s.csv"]):
        assert main(argv) == 2
        assert "cannot write in /proc/sys (read-only" in capsys.readouterr().err


def test_ctrl_c_outside_a_sweep_exits_130_without_a_traceback(monkeypatch, tmp_path, capsys):
    """How `main` answers a KeyboardInterrupt from any stage (prepare's work, where it is raised
    here; a real SIGINT ends the demo in tests/test_demo.py)."""
    import fer_ray.data.ingest as ingest
    from fer_ray.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ingest, "build_catalog", interrupted)
    assert main(["prepare", "--source", "synthetic", "--output", str(tmp_path / "c")]) == 130
    assert "interrupted (Ctrl+C)" in capsys.readouterr().err



def test_yaml_values_get_the_flags_types(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 3\nlr: 1e-3\ngpu: false\ntta: flip\ninput_size:\n")
    args = parse_args(["train", "--config", str(config), "--catalog", "c", "--run-dir", "r"])
    assert (args.epochs, args.lr, args.gpu, args.eval_tta, args.input_size) == (3, 0.001, False, "flip", None)
    # a --no-NAME switch set by its flag's name means what the flag means; by its field's name, the value
    for text, flip in (("no_flip: true\n", False), ("no-flip: false\n", True), ("flip: false\n", False)):
        config.write_text(text)
        assert parse_args(["train", "--config", str(config), "--catalog", "c", "--run-dir", "r"]).flip is flip, text
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("storage: out\nmodels: [small_cnn, vgg16]\nepochs: 2\n")
    assert parse_args(["pipeline", "--config", str(pipeline)]).models == ("small_cnn", "vgg16")
    pipeline.write_text("storage: out\nmodels: [small_cnn, vgg61]\n")
    with pytest.raises(SystemExit):
        parse_args(["pipeline", "--config", str(pipeline)])



def test_yaml_keys_are_the_flags_names(tmp_path):
    """A flag whose name is not its field's (`--tta` sets `eval_tta`) is set by the key users read
    in --help; the flag wins over the file; `help` is not a settable key."""
    config = tmp_path / "c.yaml"

    def parse(text, *argv):
        config.write_text(text)
        return parse_args(["train", "--catalog", "c", "--run-dir", "r", "--config", str(config), *argv])

    assert parse("tta: flip\nrotate: 5\n").eval_tta == "flip"
    assert parse("tta: flip\nrotate: 5\n").rotate_deg == 5.0
    assert parse("tta: flip\n", "--tta", "tencrop").eval_tta == "tencrop"  # the flag wins
    for text in ("help: true\n", "eval_tta: flip\n"):
        with pytest.raises(SystemExit):
            parse(text)


def test_a_bug_shows_its_traceback_and_exits_1_while_a_refusal_is_one_line(monkeypatch, tmp_path, capsys):
    """A ValueError from numpy, torch or our own code is not the user's mistake: the traceback
    is printed, then one line saying it is a bug to report. A FerRayError is one line, exit 2."""
    import fer_ray.data.ingest as ingest
    from fer_ray.cli import main
    from fer_ray.errors import FerRayError

    def broken(*args, **kwargs):
        import numpy as np

        return np.zeros(3).reshape(2, 2)  # a real internal error: ValueError from numpy

    monkeypatch.setattr(ingest, "build_catalog", broken)
    assert main(["prepare", "--source", "synthetic", "--output", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "cannot reshape array" in err
    assert err.rstrip().splitlines()[-1].startswith("fer-ray prepare: internal error (a bug in fer-ray")

    def refused(*args, **kwargs):
        raise FerRayError("the user's input is wrong in this way")

    monkeypatch.setattr(ingest, "build_catalog", refused)
    assert main(["prepare", "--source", "synthetic", "--output", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err == "fer-ray prepare: error: the user's input is wrong in this way\n"


@pytest.mark.parametrize("stage, argv, make_error, line", [
    ("prepare", ["--source", "synthetic"], lambda: OSError(28, "No space left on device", "/data/c/part-0.parquet"),
     "fer-ray prepare: error: no space left on the device writing /data/c/part-0.parquet; free some space, then "
     "rerun the same command"),
    ("sweep", ["svm", "--catalog", "c"], lambda: __import__("ray.exceptions").exceptions.ActorDiedError(),
     "fer-ray sweep: error: a Ray worker process died (The actor died unexpectedly before finishing this task.; "
     "killed, or out of memory: see /tmp/ray/session_latest/logs); rerun the same command to resume (finished "
     "work is kept)"),
])
def test_a_full_disk_or_a_dead_worker_is_one_line_with_the_rerun_hint(stage, argv, make_error, line, monkeypatch,
                                                                     tmp_path, capsys):
    """What the machine did, not the user nor a bug: one line saying what to do, exit 1, no
    traceback (the errors are raised where the stage's work starts)."""
    import fer_ray.data.ingest as ingest
    import fer_ray.tuning.sweeps as sweeps
    from fer_ray.cli import main

    def fail(*args, **kwargs):
        raise make_error()

    monkeypatch.setattr(ingest, "build_catalog", fail)
    monkeypatch.setattr(sweeps, "sweep_svm", fail)
    out = ["--output", str(tmp_path / "c")] if stage == "prepare" else ["--run-dir", str(tmp_path / "r")]
    assert main([stage, *argv, *out]) == 1
    assert capsys.readouterr().err == line + "\n"
