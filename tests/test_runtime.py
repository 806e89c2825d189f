"""The local Ray that fer-ray starts (its workers can find it: Ray Train's cleaner needs that),
and a RAY_ADDRESS that names no cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.ray


@pytest.mark.timeout(120)
def test_workers_reach_their_own_local_ray_through_the_state_api(ray_session):
    if os.environ.get("RAY_ADDRESS"):
        pytest.skip("the tests joined an existing cluster (RAY_ADDRESS is set)")
    ray = ray_session

    @ray.remote(num_cpus=0)
    def look_up() -> tuple[str, int]:
        from ray.util.state import list_nodes  # what Ray Train's placement-group cleaner uses

        return os.environ.get("RAY_ADDRESS", ""), len(list_nodes())

    address, nodes = ray.get(look_up.remote(), timeout=60)
    assert address == ray.get_runtime_context().gcs_address and nodes == 1
    assert "RAY_ADDRESS" not in os.environ  # the driver's own environment is left as it was


@pytest.mark.timeout(120)
def test_a_ray_address_nobody_answers_at_is_one_error_line_not_minutes_of_retries(tmp_path):
    """ray.init retried an unanswered GCS address for minutes (until killed), logging all along."""
    from fer_ray.runtime import free_port

    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{free_port()}"}
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "fer_ray.cli", "prepare", "--source", "synthetic", "--count", "70",
                           "--output", str(tmp_path / "cat")], env=env, capture_output=True, text=True, timeout=100)
    assert done.returncode == 2 and time.time() - t0 < 60
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"fer-ray prepare: error: no Ray cluster answers at RAY_ADDRESS={env['RAY_ADDRESS']}")
    assert not (tmp_path / "cat").exists()


@pytest.mark.timeout(120)
def test_ray_keeps_its_own_output_quiet_in_the_driver_and_every_worker(ray_session):
    """Without --verbose: no Ray Data progress bars or INFO on the console, and the hook that
    quiets Ray Data, Serve and Ray Train's reporter has run in each worker process Ray starts."""
    import logging

    import ray.data

    from fer_ray import runtime

    assert not runtime.VERBOSE
    assert ray.data.DataContext.get_current().enable_progress_bars is False
    from ray._private.log import PlainRayHandler  # Ray Data's console handler (pytest adds its own)

    consoles = [h for h in logging.getLogger("ray.data").handlers if isinstance(h, PlainRayHandler)]
    assert consoles and all(h.level == logging.ERROR for h in consoles)

    @ray_session.remote(num_cpus=0)
    def worker_settings() -> tuple[str | None, str | None]:
        return os.environ.get("RAY_DATA_LOG_LEVEL"), os.environ.get("RAY_SERVE_LOG_TO_STDERR")

    assert ray_session.get(worker_settings.remote(), timeout=60) == ("ERROR", "0")
    assert runtime.train_logging().log_level == "WARNING"


# What a Ray worker prints, run as a driver of its own: Ray reads its log settings when imported,
# so this starts from a fresh interpreter that imports fer-ray's runtime first, as the command line
# does.
FORWARDED = """
import sys, time
from fer_ray.runtime import init_ray
import ray

init_ray(num_cpus=1)

@ray.remote(num_cpus=0)
def work():
    print("[2026-12-03 16:56:08,274 E 2792 2849] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' "
          "... has constructor arguments in the object store and max_restarts > 0.", file=sys.stderr, flush=True)
    print("[train] epoch 1/1 loss 1.9", file=sys.stderr, flush=True)  # after it, in the same stream

ray.get(work.remote())
time.sleep(5)  # the worker's lines reach the driver through the log monitor
ray.shutdown()
"""


@pytest.mark.timeout(180)
def test_ray_core_log_lines_and_start_up_warnings_stay_off_the_console(tmp_path):
    """Ray Train's controller logs a C++ error line about its own PreemptionWatcher in every run;
    a local Ray in its default authentication mode (a token, made under HOME) warns that it is on."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_DEDUP_LOGS_SKIP_REGEX", "RAY_AUTH_MODE")}
    done = subprocess.run([sys.executable, "-c", FORWARDED], env=env | {"HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / ".ray" / "auth_token").is_file()  # the default mode it ran in
    output = done.stdout + done.stderr
    assert "[train] epoch 1/1 loss 1.9" in output and "core_worker.cc" not in output, output
    assert "Token authentication" not in output, output


def test_verbose_is_a_flag_of_every_stage_that_starts_ray_and_reaches_the_runtime(monkeypatch):
    from fer_ray import cli, runtime

    for argv in (["prepare", "--source", "synthetic", "--output", "c"], ["demo"], ["pipeline", "--storage", "s"],
                 ["train", "--catalog", "c", "--run-dir", "r"], ["sweep", "svm", "--catalog", "c", "--run-dir", "r"],
                 ["sweep", "cnn", "--catalog", "c", "--run-dir", "r"], ["score", "--artifact", "a", "--input", "i", "--output", "o.csv"],
                 ["ensemble", "--members", "a", "b", "--catalog", "c", "--run-dir", "r"], ["serve", "--artifact", "a"]):
        assert cli.parse_args([*argv, "--verbose"]).verbose, argv
    seen = []
    monkeypatch.setattr(runtime, "VERBOSE", False)
    serve = type(cli.parse_args(["serve"]))
    monkeypatch.setattr(serve, "run", staticmethod(lambda args: seen.append(runtime.VERBOSE)))
    assert cli.main(["serve", "--artifact", "a", "--verbose"]) == 0 and seen == [True]


def test_train_workers_get_the_cpus_nobody_named(ray_session):
    """One worker on the 2-CPU test cluster trains on both cores; more workers share them."""
    from fer_ray.runtime import default_cpus_per_worker

    assert [default_cpus_per_worker(n) for n in (1, 2, 3)] == [2, 1, 1]


def test_the_command_line_waits_for_a_stopping_dataset_but_not_for_other_threads():
    """Ray Data's executor thread still stopping when Ray shuts down at exit would make Ray's core
    end the process with status 1 instead of the command's 130/143."""
    import threading

    from fer_ray.runtime import wait_for_stopping_datasets

    stopping = threading.Thread(target=time.sleep, args=(1.0,), name="StreamingExecutor-dataset_1", daemon=True)
    other = threading.Thread(target=time.sleep, args=(5.0,), name="ray_print_logs", daemon=True)
    stopping.start()
    other.start()
    t0 = time.time()
    wait_for_stopping_datasets(timeout=10)
    assert not stopping.is_alive() and other.is_alive() and time.time() - t0 < 4
