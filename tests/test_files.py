"""The one walker (``files_under``) behind prepare's folder sources and score's listing, and
the rules predict shares with it: every file found is one row, under its own name."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import traceback
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from datagen import by_id, face_pixels, listed, run_source, write_image
from fer_ray.data.files import Entry, files_under, not_a_file
from fer_ray.data.sources import FolderSource, KdefSource, SourceError, make_source
from fer_ray.emotions import EMOTIONS
from fer_ray.errors import FerRayError
from fer_ray.inference.crops import DetectConfig, detect_batch
from fer_ray.inference.predict import check_inputs

NOBODY = 65534


def rel(entries: list[Entry], root: Path) -> list[tuple[str, str]]:
    return [(e.path.relative_to(root).as_posix(), e.problem) for e in entries]


def test_a_file_reachable_through_a_link_is_listed_under_its_own_name(tmp_path):
    """``a.png -> z.png`` and ``a_dir -> z_dir`` come first in name order, and the files were
    listed under the links' names only; the links that lead out of the tree are still followed."""
    root, outside = tmp_path / "in", tmp_path / "outside"
    for path in (root / "z.png", root / "z_dir" / "x.png", outside / "o.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (root / "a.png").symlink_to("z.png")
    (root / "z_dir" / "a_back.png").symlink_to("../z.png")
    (root / "a_dir").symlink_to("z_dir", target_is_directory=True)
    (root / "a_out").symlink_to(outside, target_is_directory=True)
    (root / "z_dir" / "loop").symlink_to("..", target_is_directory=True)
    assert rel(files_under(root), root) == [("a_out/o.png", ""), ("z.png", ""), ("z_dir/x.png", "")]


def deep_folder(root: Path) -> str:
    """A folder whose path is longer than the system allows (PATH_MAX, 4096 bytes), with a file
    in it: made step by step through folder handles, as only relative names can reach it.
    Root cannot read it either, so it stands in for every folder that cannot be listed."""
    fd, names = os.open(root, os.O_RDONLY), []
    try:
        for level in range(18):
            names.append(f"{level:02d}" + "d" * 240)
            os.mkdir(names[-1], dir_fd=fd)
            fd, parent = os.open(names[-1], os.O_RDONLY, dir_fd=fd), fd
            os.close(parent)
        os.close(os.open("face.png", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
    finally:
        os.close(fd)
    return "/".join(names)


def test_a_folder_that_cannot_be_listed_is_an_entry_and_an_error_row(tmp_path):
    """os.walk skipped such a folder without a word: its files vanished from prepare and score."""
    root = tmp_path / "in"
    write_image(root / "happy" / "ok.png", face_pixels(1)[0])
    deep = deep_folder((root / "happy").resolve())
    entries = files_under(root)
    assert len(entries) == 2 and entries[1] == Entry(root / "happy" / "ok.png")
    unlisted = entries[0]
    assert unlisted.problem == "folder cannot be listed (File name too long)"
    assert deep.startswith(unlisted.path.relative_to(root / "happy").as_posix())
    assert not_a_file(unlisted.path) == "cannot be read (File name too long)"

    rows = by_id(run_source(FolderSource(str(root))))  # prepare: a rejected row
    assert rows[unlisted.path.relative_to(root).as_posix()]["error"] == unlisted.problem
    assert rows["happy/ok.png"]["label"] == EMOTIONS.index("happy") and len(rows) == 2
    kdef = by_id(run_source(KdefSource(str(root))))
    assert kdef[unlisted.path.relative_to(root).as_posix()]["error"] == unlisted.problem

    paths = [str((root / "happy" / "ok.png").resolve()), str(unlisted.path.resolve())]  # files, then folders
    assert listed(root) == (paths, 0)  # score: listed whatever its name ...
    assert listed(f"{root}/**/*.png") == (sorted(paths), 0)  # ... where the glob might match in it
    assert listed(f"{root}/*/*.png") == (paths[:1], 0)  # and not where it cannot
    rows = detect_batch({"path": np.array(paths, dtype=object)}, DetectConfig(mode="none"))
    assert list(rows["error"]) == ["", "cannot be read (File name too long)"]  # ... and an error row
    shutil.rmtree(tmp_path / "in")  # pytest's own clean-up cannot reach that deep


def as_nobody(fn):
    """``fn()``'s JSON-able result where a folder of mode 0 cannot be read: this process when it
    is not root, else a forked child that has become the user nobody (root reads any folder)."""
    if os.geteuid() != 0:
        return fn()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read)
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            out = {"result": fn()}
        except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
            out = {"error": traceback.format_exc()}
        with os.fdopen(write, "w") as fh:
            json.dump(out, fh)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        out = json.loads(fh.read() or '{"error": "the child wrote nothing"}')
    os.waitpid(pid, 0)
    assert "error" not in out, out.get("error")
    return out["result"]


def test_a_folder_without_permission_is_a_rejected_row_and_an_error_row():
    """``chmod 0`` on a sub-folder (run as a user that mode stops, root being exempt)."""
    top = Path(tempfile.mkdtemp())  # not pytest's tmp_path: the user nobody cannot enter that
    try:
        root = top / "in"
        write_image(root / "train" / "happy" / "ok.png", face_pixels(1)[0])
        write_image(root / "train" / "sad" / "private" / "hidden.png", face_pixels(1)[0])
        for folder, _, files in os.walk(top):
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o644)
        os.chmod(root / "train" / "sad" / "private", 0)

        def listings():
            items = FolderSource(str(root)).plan()
            return {"prepare": {it["id"]: it["error"] for it in items}, "score": listed(root)}

        found = as_nobody(listings)
    finally:
        os.chmod(top / "in" / "train" / "sad" / "private", 0o755)
        shutil.rmtree(top)
    assert found["prepare"] == {"train/happy/ok.png": "",
                                "train/sad/private": "folder cannot be listed (Permission denied)"}
    assert found["score"] == [[str(root / "train" / "happy" / "ok.png"), str(root / "train" / "sad" / "private")], 0]


def test_a_name_that_is_not_utf8_is_read_under_an_escaped_id(tmp_path):
    """``happy/bad\\xff.png`` made prepare die in pandas with an IndexError: Arrow cannot hold the
    name's lone surrogate. The file is opened by its bytes and shown as score shows it."""
    root = tmp_path / "in"
    write_image(root / "happy" / "ok.png", face_pixels(1)[0])
    write_image(Path(os.fsdecode(bytes(root / "happy") + b"/bad\xff.png")), face_pixels(2)[1])
    items = FolderSource(str(root)).plan()
    pa.Table.from_pylist(items)  # what Ray Data does with the work items first
    rows = by_id(run_source(FolderSource(str(root))))
    assert sorted(rows) == ["happy/bad\\xff.png", "happy/ok.png"]
    assert rows["happy/bad\\xff.png"]["error"] == "" and rows["happy/bad\\xff.png"]["label"] == EMOTIONS.index("happy")
    pa.array(list(rows), pa.string())  # UTF-8 all through


def test_an_empty_input_is_refused_not_taken_for_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "happy" / "here.png", face_pixels(1)[0])
    with pytest.raises(FerRayError, match="--input is empty"):
        listed("")
    with pytest.raises(SourceError, match="needs --input"):
        make_source("folders", "")
    with pytest.raises(FerRayError, match="an image path is empty"):
        check_inputs(["happy/here.png", ""])
