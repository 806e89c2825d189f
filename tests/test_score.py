"""Bulk scoring: exact rows for a messy folder, and an interrupted job resumed exactly once."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datagen import encode, listed, pickled_weights_artifact, truncated_jpeg
from fer_ray.emotions import EMOTIONS
from fer_ray.errors import FerRayError
from fer_ray.data.files import display_path
from fer_ray.inference.batch import Destination, ScoreError, parts_folder, plan_resources, score_folder
from fer_ray.inference.blocks import PartStore, read_blocks, write_listing
from fer_ray.inference.crops import LANDMARK_COLUMNS, NO_FACE, SCHEMA, DetectConfig, detect_batch, scored_table
from fer_ray.inference.assemble import assemble
from fer_ray.inference.tables import write_table
from fer_ray.inference.predict import predict
from fer_ray.rundir import open_run
from photos import SYNTHETIC, background, fer_photo, one_face_photo, two_face_photo

ROOT = Path(__file__).resolve().parents[1]


def messy_folder(root: Path) -> dict[str, str]:
    """Nested photos and bad files; returns relative path -> what its rows must say."""
    two, _ = two_face_photo()
    files = {
        "party/2024/two_faces.png": (encode(two, "PNG"), "2 faces"),
        "party/2024/deep/er/one_face.jpg": (encode(one_face_photo(), "JPEG"), "1 face"),
        "landscape.png": (encode(background(320, 240, seed=3), "PNG"), NO_FACE),
        "party/corrupt.jpg": (truncated_jpeg(two), "truncated or corrupt image"),
        "party/notes.jpg": (b"a text file wearing a .jpg name\n" * 10, "not a decodable image"),
        "empty.png": (b"", "empty file"),
    }
    for rel, (data, _) in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "party" / "README.txt").write_text("not an image: ignored, but counted")
    return {rel: expect for rel, (_, expect) in files.items()}


# ------------------------------------------------------------------ plain pieces, no Ray


def test_detect_batch_modes_and_bad_files(tmp_path):
    expect = messy_folder(tmp_path)
    paths = np.array([str(tmp_path / rel) for rel in expect], dtype=object)

    rows = detect_batch({"path": paths}, DetectConfig(mode="all", detector=SYNTHETIC))
    by_path = {}
    for i, p in enumerate(rows["path"]):
        by_path.setdefault(Path(p).relative_to(tmp_path).as_posix(), []).append(i)
    assert rows["image"].shape == (len(rows["path"]), 48, 48)
    assert len(by_path["party/2024/two_faces.png"]) == 2
    for rel, want in expect.items():
        if "face" not in want or want == NO_FACE:
            (i,) = by_path[rel]
            assert rows["error"][i].startswith(want)
    faces = [i for idx in by_path.values() for i in idx if not rows["error"][i]]
    assert len(faces) >= 2 and all(rows["w"][i] > 0 for i in faces)
    # every row in the output's schema; a row with an error has no face, box, emotion or probabilities
    table = scored_table(rows, np.full((len(rows["path"]), 7), 1 / 7, np.float32))
    assert table.schema == SCHEMA
    assert table["frame"].null_count == table["time"].null_count == table["track"].null_count == len(table)
    void = [bool(e) for e in rows["error"]]
    for name in ("face", "x", "w", "emotion", EMOTIONS[0]):
        assert [v is None for v in table[name].to_pylist()] == void, name
    assert [e is not None for e in table["error"].to_pylist()] == void  # null on a face's row

    largest = detect_batch({"path": paths[:1]}, DetectConfig(mode="largest", detector=SYNTHETIC))
    assert list(largest["face"]) == [0]
    whole = detect_batch({"path": paths[:1]}, DetectConfig(mode="none"))
    assert (whole["w"][0], whole["h"][0]) == (640, 480) and whole["error"][0] == ""


def scored(path, faces, error="", frame=-1, boxes=None):
    """``scored_table`` rows of one file (or video frame): ``faces``, or one row with ``error``."""
    k = len(faces)
    rows = {"path": np.array([path] * k, object), "face": np.array(faces, np.int32),
            "frame": np.full(k, frame, np.int32), "time": np.full(k, np.nan if frame < 0 else frame / 10),
            "error": np.array([error] * k, object),
            **{key: np.arange(k, dtype=np.int32) + 1 for key in ("x", "y", "w", "h")},
            "points": np.full((k, 1 + len(LANDMARK_COLUMNS)), np.nan, np.float32)}  # a detector without any
    for j, key in enumerate("xywh" if boxes else ()):
        rows[key] = np.array([box[j] for box in boxes], np.int32)
    return scored_table(rows, np.full((k, 7), 1 / 7, np.float32))


def test_the_scorer_predicts_with_the_job_s_test_time_augmentation(tmp_path):
    """``--tta`` reaches the model actors: the probabilities a BlockScorer writes in its part are
    the Predictor's with that mode, and flip's differ from none's."""
    from datagen import untrained_artifact

    from fer_ray.inference.blocks import BlockScorer
    from fer_ray.inference.predictor import Predictor

    artifact = str(untrained_artifact(tmp_path / "model"))
    crops = np.random.default_rng(3).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    for i, crop in enumerate(crops):
        (tmp_path / "in" / f"c{i}.png").write_bytes(encode(crop, "PNG"))
    listing = write_listing(str(tmp_path / "in"), tmp_path, (16, 32), 60.0, set())
    refs = {k: np.array([ref[k] for ref in listing.todo_refs()]) for k in ("group", "row")}
    predictor, seen = Predictor(artifact), {}
    for tta in ("none", "flip", "tencrop"):
        scorer = BlockScorer(artifact, str(tmp_path), str(listing.todo), detect=DetectConfig(mode="none"), tta=tta)
        (key,) = scorer(refs)["key"]
        table = PartStore(tmp_path).read(key)
        seen[tta] = np.stack([table[name].to_numpy() for name in EMOTIONS], axis=1)
        np.testing.assert_allclose(seen[tta], predictor.predict_proba(crops, tta=tta), atol=1e-5)
    assert not np.allclose(seen["none"], seen["flip"])


def test_blocks_are_cut_by_content_so_a_new_file_changes_only_its_own(tmp_path):
    """Every file exactly once, in blocks of at most ``cap``; a file added later changes one
    block's key (the rest are found done), where cutting every N files would shift them all."""
    root = tmp_path / "in"
    for i in range(300):
        (root / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 3}" / f"{i:04d}.png").write_bytes(b"x")
    (root / "notes.txt").write_text("not an image")
    first = write_listing(str(root), tmp_path, (8, 16), 60.0, set())
    blocks = list(read_blocks(first.path))
    paths = [p for block in blocks for p in block["paths"]]
    assert paths == sorted(str(p) for p in root.rglob("*.png")) and first.others == 1
    assert max(len(b["paths"]) for b in blocks) <= 16 and 300 / 16 <= len(blocks) < 300 / 4
    assert (first.images, first.todo_blocks, first.todo_files) == (300, len(blocks), 300)

    (root / "d1" / "0150b.png").write_bytes(b"x")
    keys = {b["key"] for b in blocks}
    again = write_listing(str(root), tmp_path, (8, 16), 60.0, keys)
    assert again.images == 301 and again.todo_blocks in (1, 2) and again.todo_files <= 2 * 16
    todo = [p for block in read_blocks(again.todo) for p in block["paths"]]
    assert str(root / "d1" / "0150b.png") in todo


def test_parts_assemble_in_listing_order_to_csv_and_a_missing_part_is_an_error(tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("b.jpg", "a.jpg"):
        (tmp_path / "in" / name).write_bytes(b"x")
    store = PartStore(tmp_path / "out.csv.parts")
    with open_run(store.folder, "score", {}, lock="scoring job") as run:
        run.claim()
        listing = write_listing(str(tmp_path / "in"), store.folder, (16, 32), 60.0, set())
        (block,) = read_blocks(listing.path)
        assert block["paths"] == [str(tmp_path / "in" / "a.jpg"), str(tmp_path / "in" / "b.jpg")]
        with pytest.raises(RuntimeError, match="has no part; rerun to score it"):
            assemble(listing.path, store, tmp_path / "out.csv", tmp_path / "out.tracks.csv")
        store.write(block["key"], pa.concat_tables([scored(block["paths"][0], [0], error=NO_FACE),
                                                    scored(block["paths"][1], [0, 1])]))
        (tmp_path / "out.tracks.csv").write_text("an earlier run's videos\n")
        counts = assemble(listing.path, store, tmp_path / "out.csv", tmp_path / "out.tracks.csv")
        assert not (tmp_path / "out.tracks.csv").exists()  # no videos now: no summary of old ones
        with pytest.raises(FerRayError, match="another scoring job"):
            with open_run(store.folder, "score", {}, lock="scoring job"):
                pass
    csv = pd.read_csv(tmp_path / "out.csv")
    assert list(csv.columns) == SCHEMA.names
    assert [Path(p).name for p in csv["path"]] == ["a.jpg", "b.jpg", "b.jpg"]
    assert csv["error"].isna().tolist() == [False, True, True]
    assert (counts.files, counts.faces, counts.no_face, counts.errors, counts.videos) == (2, 2, 1, 0, 0)
    assert not list(store.folder.glob(".*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_an_upper_case_csv_name_gets_csv(tmp_path):
    write_table(scored("a.jpg", [0], error=NO_FACE), tmp_path / "OUT.CSV")
    assert (tmp_path / "OUT.CSV").read_text().startswith('"path"')


def test_links_special_files_and_foreign_names_are_listed_and_get_rows(tmp_path):
    """Nothing in the input may vanish: a link to a folder is followed, a broken link and a
    FIFO named like images get error rows (the FIFO without hanging the read), and a file
    name that is not UTF-8 is scored under an escaped name the output can hold."""
    root, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    (root / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "linked.png").write_bytes(encode(background(64, 48, seed=1), "PNG"))
    (root / "sub" / "more").symlink_to(elsewhere, target_is_directory=True)
    (root / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    os.mkfifo(root / "pipe.png")
    latin1 = os.fsdecode(b"caf\xe9.png")
    (root / latin1).write_bytes(encode(background(64, 48, seed=2), "PNG"))
    files, others = listed(root)
    assert others == 0
    assert [Path(f).relative_to(root).as_posix() for f in files] == [  # each folder's files, then links
        latin1, "pipe.png", "broken.jpg", "sub/more/linked.png"]
    assert display_path(files[0]).endswith("caf\\xe9.png") and display_path(files[1]) == files[1]
    rows = detect_batch({"path": np.array([display_path(f) for f in files], dtype=object),
                         "file": np.array([os.fsencode(f) for f in files], dtype=object)},
                        DetectConfig(mode="all", detector=SYNTHETIC))
    assert list(rows["error"]) == [NO_FACE, "not a regular file", "broken symbolic link", NO_FACE]
    assert scored_table(rows, np.zeros((4, 7), np.float32)).num_rows == 4  # UTF-8 all through


@pytest.mark.timeout(60)  # glob.glob on the two loops below never ends
def test_a_glob_lists_each_file_once_through_link_loops(tmp_path, monkeypatch):
    """``g/**/*.jpg`` followed ``g/d/loop -> ..`` until the path was too long: 41 rows for one
    file; with a second loop beside it glob never finished. A glob and a folder must list the
    same files."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g" / "d").mkdir(parents=True)
    (tmp_path / "g" / "d" / "face.jpg").write_bytes(encode(background(64, 48, seed=1), "JPEG"))
    (tmp_path / "g" / "d" / "loop").symlink_to("..", target_is_directory=True)
    (tmp_path / "g" / "d" / "loop2").symlink_to("../..", target_is_directory=True)
    (tmp_path / "g" / ".hidden.jpg").write_bytes(b"not matched by a wildcard, as in glob")
    face, hidden = str(tmp_path / "g" / "d" / "face.jpg"), str(tmp_path / "g" / ".hidden.jpg")
    assert listed("g/**/*.jpg") == ([face], 0)
    assert listed("g") == ([hidden, face], 0)
    assert listed(str(tmp_path / "g" / "*" / "*.jpg")) == ([face], 0)
    assert listed("g/**/.*.jpg") == ([hidden], 0)
    assert listed("g/d/loop/*/face.jpg") == ([str(tmp_path / "g" / "d" / "loop" / "d" / "face.jpg")], 0)
    for nothing in ("g/*.jpg", "g/**/*.png"):
        with pytest.raises(FileNotFoundError, match="input not found"):
            listed(nothing)


def test_display_paths_never_collide():
    """The output's key: a Latin-1 byte and a name that holds the text of its escape are two files."""
    latin1, literal = os.fsdecode(b"caf\xe9.png"), "caf\\xe9.png"
    assert display_path(latin1) == "caf\\xe9.png" and display_path(literal) == "caf\\x5cxe9.png"
    assert display_path("a\\b.png") == "a\\b.png" and display_path("ünï.png") == "ünï.png"  # unchanged
    names = [latin1, literal, "caf\\x5cxe9.png", os.fsdecode(b"\\\xe9.png"), "\\\\xe9.png", "\\xe9.png"]
    assert len({display_path(n) for n in names}) == len(names)


def test_an_output_that_is_not_ours_is_refused_before_any_work(tmp_path):
    someone_elses = tmp_path / "scores.parquet"
    someone_elses.mkdir()
    (someone_elses / "part-0.parquet").write_bytes(b"another tool's part")
    with pytest.raises(ScoreError, match="holds files that fer-ray score did not write .*choose a new or empty"):
        score_folder(str(tmp_path), str(tmp_path), str(someone_elses))
    mine = tmp_path / "mine.csv"
    mine.write_text("user data\n")
    with pytest.raises(ScoreError, match="exists and is no earlier result of fer-ray score"):
        score_folder(str(tmp_path), str(tmp_path), str(mine))
    with pytest.raises(ScoreError, match="names a folder of parts, but .*mine.csv is a file"):
        score_folder(str(tmp_path), str(tmp_path), f"{mine}/")
    assert mine.read_text() == "user data\n" and not parts_folder(mine).exists()
    with pytest.raises(ScoreError, match="name the file too, e.g. scores.csv"):
        score_folder(str(tmp_path), str(tmp_path), str(tmp_path / ".csv"))


def test_where_a_job_writes_a_file_or_a_folder_of_parts(tmp_path):
    one = Destination.of(str(tmp_path / "s.csv"))
    assert (one.folder, one.parts, one.job) == (False, tmp_path / "s.csv.parts", tmp_path / "s.csv.parts")
    assert (one.tracks, one.plots) == (tmp_path / "s.tracks.csv", tmp_path / "s.plots")
    parts = Destination.of(f"{tmp_path / 'scores'}/")
    assert (parts.folder, parts.parts, parts.job) == (True, tmp_path / "scores", tmp_path / "scores" / "_job")
    assert parts.tracks == tmp_path / "scores" / "_tracks.parquet"   # "_": skipped by the folder's readers
    (tmp_path / "empty").mkdir()
    assert Destination.of(str(tmp_path / "empty")).folder  # an existing folder, without the slash
    with pytest.raises(ScoreError, match=r"must end in .parquet or .csv \(one file\) or / \(a folder of Parquet"):
        Destination.of(str(tmp_path / "scores"))


def test_an_input_without_images_or_videos_is_refused_and_leaves_nothing(tmp_path):
    from datagen import untrained_artifact

    artifact = untrained_artifact(tmp_path / "model")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no image")
    out = tmp_path / "scores.parquet"
    with pytest.raises(FileNotFoundError, match="no image files .* or videos .* in"):
        score_folder(str(artifact), str(tmp_path / "in"), str(out))
    assert not out.exists() and not parts_folder(out).exists()


def test_a_broken_artifact_is_one_error_line_before_ray_starts(tmp_path, monkeypatch, capsys):
    """Weights that are no safetensors file were found only by the model actors, after Ray's
    start: ~60 s and hundreds of log lines for one error."""
    import fer_ray.runtime
    from fer_ray.cli import main

    monkeypatch.setattr(fer_ray.runtime, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    artifact = pickled_weights_artifact(tmp_path / "artifact")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(encode(background(64, 48, seed=1), "PNG"))
    out = tmp_path / "scores.parquet"
    assert main(["score", "--artifact", str(artifact), "--input", str(tmp_path / "in"), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.safetensors is not a readable safetensors file" in err[0]
    assert not out.exists() and not parts_folder(out).exists()


@pytest.mark.parametrize("cpus,gpus,gpu", [(1, 0, False), (2, 0, False), (3, 0, False), (16, 0, False),
                                           (2, 1, True), (8, 4, True)])
def test_resource_plan_always_fits_actors_and_a_task(cpus, gpus, gpu):
    plan = plan_resources(cpus, gpus, gpu)
    assert plan.actors >= 1 and plan.device == ("cuda" if gpu else "cpu") and plan.actor_gpus == int(gpu)
    assert plan.actors * plan.actor_cpus + plan.task_cpus <= cpus + 1e-9   # else Ray Data waits forever
    if gpu:  # detection tasks beside the GPU actors
        assert plan.actors == gpus and plan.task_cpus > 0 and not plan.fused
    else:  # every CPU an actor that does it all, one thread each
        assert plan.fused and plan.actors == cpus and plan.actor_cpus == 1 and plan.threads == 1


def test_fewer_cpu_actors_than_cpus_share_them_out():
    plan = plan_resources(4, 0, actors=2)
    assert (plan.actors, plan.actor_cpus, plan.threads, plan.fused) == (2, 2.0, 2, True)
    assert plan_resources(2, 0, actors=3).actor_cpus == 0.666


@pytest.mark.parametrize("cpus,gpus,actors", [(2, 2, None), (4, 4, None), (8, 8, None), (1, 1, None),
                                              (4, 1, 1), (3, 4, 2)])
def test_gpu_plans_fit_when_cpus_are_as_few_as_gpus(cpus, gpus, actors):
    plan = plan_resources(cpus, gpus, gpu=True, actors=actors)
    assert plan.task_cpus > 0 and plan.actors * plan.actor_cpus + plan.task_cpus <= cpus + 1e-9
    assert plan.actors == (actors or gpus)


def test_more_gpu_actors_than_gpus_is_refused():
    with pytest.raises(ScoreError, match="--actors 2 with --gpu needs 2 GPUs; the Ray cluster has 1"):
        plan_resources(16, 1, gpu=True, actors=2)


def test_overwrite_waits_its_turn_behind_a_running_job(tmp_path, small_artifact):
    """--overwrite must not pull a running job's parts (and lock) from under it."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(encode(background(64, 48, seed=1), "PNG"))
    out = tmp_path / "scores.parquet"
    parts = parts_folder(out)
    with open_run(parts, "score", {}, lock="scoring job"):
        (parts / "part-000000.parquet").write_bytes(b"a running job's part")
        with pytest.raises(FerRayError, match="another scoring job"):
            score_folder(str(small_artifact), str(tmp_path / "in"), str(out), overwrite=True)
        assert (parts / "part-000000.parquet").read_bytes() == b"a running job's part"


def test_bad_output_name_is_a_user_error(tmp_path, capsys):
    from fer_ray.cli import main

    assert main(["score", "--artifact", str(tmp_path), "--input", str(tmp_path),
                 "--output", str(tmp_path / "out.json")]) == 2
    assert "must end in .parquet or .csv" in capsys.readouterr().err


# ------------------------------------------------------------------ on Ray


def _check_exact(out: Path, root: Path, expect: dict[str, str]) -> pd.DataFrame:
    df = pq.read_table(out).to_pandas()
    assert list(df.columns) == SCHEMA.names
    df["rel"] = [Path(p).relative_to(root).as_posix() for p in df["path"]]
    assert sorted(df["rel"].unique()) == sorted(expect)           # nothing dropped, nothing extra
    for rel, want in expect.items():
        rows = df[df["rel"] == rel]
        if want.endswith("face") or want.endswith("faces"):
            n = int(want.split()[0])
            assert len(rows) == n and rows["error"].isna().all() and list(rows["face"]) == list(range(n))
            probs = rows[list(EMOTIONS)].to_numpy()
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
            assert list(rows["emotion"]) == [EMOTIONS[i] for i in probs.argmax(axis=1)]
        else:
            assert len(rows) == 1 and rows["error"].iloc[0].startswith(want), (rel, rows["error"].tolist())
            assert rows[["face", "x", "emotion", *EMOTIONS]].isna().all(axis=None)
    return df


@pytest.mark.ray
@pytest.mark.timeout(480)  # the shared small_artifact fixture may train first
def test_score_folder_gives_exactly_the_expected_rows(tmp_path, ray_session, small_artifact):
    root = tmp_path / "photos"
    expect = messy_folder(root)
    out = tmp_path / "scores.parquet"
    job = {"faces": "all", "detector": SYNTHETIC, "part_files": 2}
    summary = score_folder(str(small_artifact), str(root), str(out), **job)

    df = _check_exact(out, root, expect)
    two = df[df["rel"] == "party/2024/two_faces.png"].sort_values("face")
    _, spots = two_face_photo()
    for (_, row), (x, y, side) in zip(two.iterrows(), spots):   # boxes land on the pasted faces
        assert abs(row["x"] + row["w"] / 2 - (x + side / 2)) < side / 4
        assert abs(row["y"] + row["h"] / 2 - (y + side / 2)) < side / 4
    assert (summary.files, summary.faces, summary.no_face, summary.errors) == (6, 3, 1, 3)
    assert summary.skipped_non_images == 1 and list(parts_folder(out).glob("part-*.parquet"))

    parts = len(list(parts_folder(out).glob("part-*.parquet")))
    again = score_folder(str(small_artifact), str(root), str(out), **job)
    assert (again.scored_now, again.already_scored, again.files) == (0, parts, 6)
    (root / os.fsdecode(b"caf\xe9.png")).write_bytes(encode(background(320, 240, seed=4), "PNG"))  # Latin-1 name
    grown = score_folder(str(small_artifact), str(root), str(out), **job)
    assert (grown.files, grown.no_face) == (7, 2) and 1 <= grown.scored_now < 7  # the new file's block, not all
    assert str(root / "caf\\xe9.png") in set(pq.read_table(out).column("path").to_pylist())
    one = score_folder(str(small_artifact), str(root / "landscape.png"), str(out), **job)
    assert one.files == 1  # OUT follows the input
    assert set(pq.read_table(out).column("path").to_pylist()) == {str(root / "landscape.png")}
    with pytest.raises(ValueError, match="holds a score run with different mode"):
        score_folder(str(small_artifact), str(root), str(out), faces="largest", detector=SYNTHETIC)

    # A folder of parts: the parts are the output, read as one table; another cut of the blocks
    # leaves no part of the old cut behind (it would be read as duplicate rows)
    folder, expect = tmp_path / "scores", expect | {"caf\\xe9.png": NO_FACE}
    parts = score_folder(str(small_artifact), str(root), f"{folder}/", **job)
    assert parts.output == f"{folder}/" and (parts.files, parts.faces) == (7, 3)
    _check_exact(folder, root, expect)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("part-")) == ["_job"]
    recut = score_folder(str(small_artifact), str(root), f"{folder}/", **(job | {"part_files": 3}))
    assert recut.scored_now == 7
    _check_exact(folder, root, expect)


@pytest.mark.ray
@pytest.mark.timeout(480)  # the shared small_artifact fixture may train first
def test_score_with_the_default_detector_writes_each_face_s_score_and_landmarks(tmp_path, ray_session,
                                                                                 small_artifact, fer_folders):
    """Real faces with the default detector (CenterFace), into CSV: the detector's score and
    the ten landmark columns are filled on face rows, empty on the row of a photo without a
    face, and equal what ``fer_ray.predict`` gives for the same photo."""
    img, spots = fer_photo(str(fer_folders))
    root = tmp_path / "photos"
    root.mkdir()
    (root / "two.png").write_bytes(encode(img, "PNG"))
    (root / "landscape.png").write_bytes(encode(background(320, 240, seed=3), "PNG"))
    out = tmp_path / "scores.csv"
    summary = score_folder(str(small_artifact), str(root), str(out))
    assert (summary.faces, summary.no_face) == (2, 1)
    df = pd.read_csv(out).sort_values(["path", "face"])
    faces, empty = df[df["path"].str.endswith("two.png")], df[df["path"].str.endswith("landscape.png")]
    assert list(df.columns[:10]) == ["path", "frame", "time", "face", "track", "x", "y", "w", "h", "detector_score"]
    assert faces[["detector_score", *LANDMARK_COLUMNS]].notna().all().all()
    assert empty[["detector_score", *LANDMARK_COLUMNS]].isna().all().all()
    expected = predict(img, artifact=str(small_artifact))
    for (_, row), record in zip(faces.iterrows(), expected):
        assert row["detector_score"] == pytest.approx(record["detector_score"], abs=1e-3)
        assert (row["nose_x"], row["nose_y"]) == pytest.approx(record["landmarks"]["nose"], abs=0.01)


@pytest.mark.ray
@pytest.mark.timeout(480)  # the shared small_artifact fixture may train first
def test_the_gpu_layout_on_cpus_gives_the_same_rows(tmp_path, ray_session, small_artifact, monkeypatch, caplog):
    """--gpu's layout (detection tasks, then model actors that get each block's detected rows)
    run on CPUs: every file still comes out whole, with its error rows null where they have no
    face."""
    import fer_ray.inference.batch as batch

    split = batch.ResourcePlan(actors=1, actor_cpus=1.0, actor_gpus=0, device="cpu", threads=1, task_cpus=0.5)
    monkeypatch.setattr(batch, "plan_resources", lambda *args: split)
    root = tmp_path / "photos"
    expect = messy_folder(root)
    out = tmp_path / "scores.parquet"
    caplog.set_level(logging.INFO, logger="fer_ray")
    score_folder(str(small_artifact), str(root), str(out), faces="all", detector=SYNTHETIC, batch_size=1)
    assert any("detection tasks at 0.5 CPU" in line for line in caplog.messages), caplog.messages
    _check_exact(out, root, expect)


@pytest.mark.ray
@pytest.mark.timeout(480)  # the shared small_artifact fixture may train first
def test_killed_job_resumes_and_scores_every_file_exactly_once(tmp_path, ray_session, small_artifact):
    root = tmp_path / "photos"
    for i in range(160):   # detection-heavy, so the job is still running when the first part lands
        (root / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 4}" / f"bg{i:03d}.png").write_bytes(encode(background(320, 240, seed=i), "PNG"))
    out = tmp_path / "scores.csv"
    parts = parts_folder(out)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    cmd = [sys.executable, "-m", "fer_ray.cli", "score", "--artifact", str(small_artifact), "--input", str(root),
           "--output", str(out), "--faces", "all", "--detector", SYNTHETIC, "--part-files", "8", "--batch-size", "16",
           "--num-cpus", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not list(parts.glob("part-*.parquet")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)   # our own child's process group (driver + its Ray)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the job ended before it could be interrupted"
    assert not out.exists()
    done_before = [pq.read_metadata(p).num_rows for p in parts.glob("part-*.parquet")]
    assert 0 < sum(done_before) < 160

    summary = score_folder(str(small_artifact), str(root), str(out), faces="all", detector=SYNTHETIC, part_files=8,
                           batch_size=16)
    assert summary.already_scored == len(done_before) and summary.scored_now == 160 - sum(done_before)
    df = pd.read_csv(out)
    assert len(df) == 160 and df["path"].is_unique and (df["error"] == NO_FACE).all()
    assert sorted(df["path"]) == sorted(str(p) for p in root.rglob("*.png"))


@pytest.mark.ray
@pytest.mark.timeout(480)  # the shared small_artifact fixture may train first
def test_parts_are_no_bigger_than_asked_even_below_a_detection_task(tmp_path, ray_session, small_artifact):
    """--part-files 8 on 48 crops: parts land as files complete (a detection task of 1,024
    crops would otherwise hold all 48 until the end, and an interruption would keep nothing)."""
    root = tmp_path / "crops"
    root.mkdir()
    rng = np.random.default_rng(3)
    for i in range(48):
        (root / f"c{i:02d}.png").write_bytes(encode(rng.integers(0, 256, (48, 48), dtype=np.uint8), "PNG"))
    out = tmp_path / "scores.parquet"
    summary = score_folder(str(small_artifact), str(root), str(out), faces="none", part_files=8)
    sizes = [pq.read_metadata(p).num_rows for p in parts_folder(out).glob("part-*.parquet")]
    assert summary.files == 48 and sum(sizes) == 48
    assert len(sizes) >= 6 and max(sizes) <= 8, sizes


def test_the_summary_keeps_start_up_apart_and_rates_keep_their_figures():
    from fer_ray.inference.batch import ScoreSummary, rate

    assert [rate(r) for r in (0.4471, 5.0, 38.26, 481.7, 1180.2)] == ["0.447", "5", "38.3", "482", "1180"]
    line = ScoreSummary("o.parquet", files=200, faces=200, scored_now=200, seconds=22.7, ray_seconds=12.7,
                        startup_seconds=22.3, steady_files=180, steady_seconds=0.4, images_per_s=450.0).line()
    assert "start-up 22.3 s (Ray 12.7 s, model actors and their first results 9.6 s)" in line
    assert "then 180 images in 0.4 s (450 img/s)" in line
    small = ScoreSummary("o.parquet", files=6, scored_now=6, seconds=25.4, ray_seconds=12.0, startup_seconds=25.4,
                         images_per_s=6 / 13.4).line()
    assert "all of them in the first results (0.448 img/s after Ray start)" in small
    assert "img/s" not in ScoreSummary("o.parquet", files=6, already_scored=6).line()


@pytest.mark.ray
@pytest.mark.timeout(480)
def test_a_score_run_prints_its_own_lines_and_ray_only_with_verbose(tmp_path):
    """`fer-ray score` used to print a Ray core error for every model actor ("... has constructor
    arguments in the object store and max_restarts > 0") and, off a terminal, dozens of Ray Data
    INFO and progress lines; its img/s was rounded to whole numbers and counted Ray's start."""
    from datagen import untrained_artifact

    artifact = untrained_artifact(tmp_path / "artifact")
    root = tmp_path / "crops"
    root.mkdir()
    rng = np.random.default_rng(5)
    for i in range(40):
        (root / f"c{i:02d}.png").write_bytes(encode(rng.integers(0, 256, (48, 48), dtype=np.uint8), "PNG"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled"}
    cmd = [sys.executable, "-m", "fer_ray.cli", "score", "--artifact", str(artifact), "--input", str(root),
           "--output", str(tmp_path / "scores.parquet"), "--faces", "none", "--part-files", "8", "--batch-size", "8",
           "--num-cpus", "2", "--overwrite"]

    quiet = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = (quiet.stdout + quiet.stderr).splitlines()
    assert quiet.returncode == 0, lines
    assert not any("constructor arguments" in line or "Warning" in line for line in lines), lines
    assert len(lines) <= 6, lines   # fer-ray's own: files found, the plan, a progress line or two, the summary
    summary = next(line for line in lines if line.startswith("score: 40 files, 40 faces"))
    assert "start-up" in summary and "(Ray " in summary and "(0 img/s" not in summary
    # The steady clock starts once both actors have returned a part.
    steady = int(summary.split("then ")[1].split(" images in")[0])
    assert 0 < steady < 40, summary

    verbose = subprocess.run([*cmd, "--verbose"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = verbose.stdout + verbose.stderr
    assert verbose.returncode == 0, output
    assert "Execution plan of Dataset" in output     # Ray Data's own INFO lines are back
    assert "constructor arguments" not in output      # the cause is gone, not only hidden


def test_the_detector_equalizes_only_when_asked_and_maps_a_shrunk_photos_boxes_back():
    """HaarDetector(equalize=False) gives the cascade the photo's own grey levels (bench_detect
    measures both ways); at a smaller detect_side the boxes still land on the pasted faces."""
    import cv2

    from fer_ray.data.faces import HaarDetector

    img, spots = two_face_photo()
    seen = []

    class Cascade:  # records what the cascade was given
        def detectMultiScale(self, image, **_):
            seen.append(image)
            return ()

    for equalize in (True, False):
        detector = HaarDetector(detect_side=640, equalize=equalize)  # the photo's own size: no shrinking
        detector._cascade = Cascade()
        detector.detect(img)
    np.testing.assert_array_equal(seen[0], cv2.equalizeHist(img))
    np.testing.assert_array_equal(seen[1], img)
    for detector in (HaarDetector(detect_side=320), HaarDetector(detect_side=320, equalize=False)):
        boxes = sorted((face.box for face in detector.detect(img)), key=lambda b: b.x)
        assert len(boxes) == 2
        for box, (x, y, side) in zip(boxes, spots):
            assert abs(box.x + box.w / 2 - (x + side / 2)) < side / 4 and box.w > side / 2


class TiedPredictor:
    """A stand-in model whose faces' two likeliest emotions are exactly tied."""

    labels, image_size = EMOTIONS, 48

    def __init__(self, probs: np.ndarray):
        self.probs = probs

    def predict_proba(self, faces: np.ndarray, tta: str = "none") -> np.ndarray:
        return self.probs[: len(faces)]  # the same whatever the augmentation


def test_exactly_tied_probabilities_give_the_same_label_in_predict_score_and_evaluate():
    """np.argsort (predict) put "happy" before "fear" in a 0.5/0.5 tie that argmax (score,
    evaluate) gives to "fear": the lower index wins everywhere now, and the top-k lists ties
    in that order too."""
    from fer_ray.emotions import ranked_emotions

    pairs = [(a, b) for a in range(7) for b in range(a + 1, 7)]
    probs = np.zeros((len(pairs), 7), np.float32)
    for row, pair in zip(probs, pairs):
        row[list(pair)] = 0.5
    ranked = ranked_emotions(probs)
    assert [tuple(r[:2]) for r in ranked] == pairs and (ranked[:, 0] == probs.argmax(axis=1)).all()
    assert [list(r) for r in ranked[:1, 2:]] == [[2, 3, 4, 5, 6]]  # the zeros in index order too
    records = predict([np.full((48, 48), 128, np.uint8)] * len(pairs), predictor=TiedPredictor(probs),
                      faces="none", top=3)
    table = scored_table({"path": np.array([f"{p}" for p in pairs], dtype=object),
                          "error": np.array([""] * len(pairs), dtype=object),
                          **{k: np.zeros(len(pairs), np.int32) for k in ("face", "x", "y", "w", "h")},
                          "frame": np.full(len(pairs), -1, np.int32), "time": np.full(len(pairs), np.nan),
                          "points": np.full((len(pairs), 1 + len(LANDMARK_COLUMNS)), np.nan, np.float32)},
                         probs)
    expected = [EMOTIONS[a] for a, _ in pairs]
    assert [r["emotion"] for r in records] == expected == table.column("emotion").to_pylist()
    assert [[t["emotion"] for t in r["top"][:2]] for r in records] == [[EMOTIONS[a], EMOTIONS[b]] for a, b in pairs]


def test_a_predicted_name_that_is_not_utf8_is_shown_escaped(tmp_path):
    """predict's records go to JSON and the terminal: a Latin-1 name printed as a lone surrogate
    failed there. It is shown as score writes it, and the file is still read."""
    from fer_ray.inference.predict import format_table, predict

    path = os.fsdecode(bytes(tmp_path) + b"/caf\xe9.png")
    Path(path).write_bytes(encode(background(64, 48, seed=2), "PNG"))
    records = predict([path, os.fsencode(path)], predictor=TiedPredictor(np.full((2, 7), 1 / 7, np.float32)),
                      faces="none")
    assert [r["image"] for r in records] == [display_path(path)] * 2 and display_path(path).endswith("caf\\xe9.png")
    assert [r["error"] for r in records] == [None, None]
    format_table(records).encode("utf-8")


@pytest.mark.parametrize("config,settings", [
    ("ScoreConfig", {"artifact": "a", "input": "i", "output": "o.parquet", "margin": 1e5}),
    ("PredictConfig", {"margin": 1.5}),
    ("PrepareConfig", {"source": "synthetic", "output": "o", "count": 10**11}),
    ("PrepareConfig", {"source": "synthetic", "output": "o", "seed": -1}),
])
def test_numbers_that_would_exhaust_memory_are_refused(config, settings):
    """--margin 1e5 padded every photo by 1e5 face sides; --count 1e11 drew 1e11 labels per task."""
    from pydantic import ValidationError

    from fer_ray.data.config import PrepareConfig
    from fer_ray.inference.config import PredictConfig, ScoreConfig

    with pytest.raises(ValidationError, match="less than or equal|greater than or equal"):
        {"ScoreConfig": ScoreConfig, "PredictConfig": PredictConfig, "PrepareConfig": PrepareConfig}[config](**settings)
