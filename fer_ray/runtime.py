"""Connecting to Ray: the one place fer-ray calls ``ray.init``.

Under ``ray job submit`` (or with RAY_ADDRESS set) this joins the cluster; otherwise it starts
a local Ray on this machine, which is what the demo and a laptop user want.

Unless ``VERBOSE`` is set (``--verbose`` on the command line), Ray's own console output is kept
to its errors: fer-ray's stages print their own progress and summary lines, and Ray Data's
INFO and progress lines, Ray Train's, and the worker-side ones otherwise flood any output that
is not a terminal (hundreds of lines in ``make demo``). Everything still goes to the session's
log files (``/tmp/ray/session_latest/logs``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import warnings
from contextlib import contextmanager

from fer_ray.errors import FerRayError

# Ray's own logs on the console too (``--verbose``): set by the command line before any stage runs.
VERBOSE = False
# A line of Ray's C++ core log ("[2026-12-03 16:56:08,274 E 2792 2849] core_worker.cc:2465: ..."),
# which Ray's worker processes write to stderr and Ray forwards to the driver's console. Such lines
# stay in the session's log files: Ray Train's controller writes one in every run, an error about
# the restart policy of Ray Train's own PreemptionWatcher actor. RAY_DEDUP_LOGS_SKIP_REGEX is Ray's
# documented setting for forwarded lines not to print; Ray reads it once, when it is imported, so
# it is set here, in the module the command line imports before any of Ray's (with --verbose too:
# VERBOSE is not known yet). A setting of the user's own wins.
CORE_LOG_LINE = r"^\[\d{4}-\d\d-\d\d [\d:,.]+ [DIWEF] \d+ \d+\] \w+\.cc:\d+:"
os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", CORE_LOG_LINE)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler or a container stopping the command), answered as Ctrl+C
    is: the stage unwinds where it is, Ray's processes are shut down, and a rerun resumes. A
    ``KeyboardInterrupt``, so that every stage's Ctrl+C handling applies to it unchanged."""


# The stop signals the command line's handlers received (``stop_on_signals``).
STOPS: list[int] = []


def stop_on_signals() -> None:
    """Have SIGINT raise KeyboardInterrupt and SIGTERM ``Terminated`` in the main thread, and
    remember both (the command line's choice; a program that imports fer-ray keeps its own
    handling, and ``init_ray`` keeps these over Ray's).

    Remembered because an exception raised wherever the main thread happens to be can be lost
    (seen with Ctrl+C while Ray Data started its actors: the job ran on to the end, exit 0); the
    command line then still answers the stop when the stage returns.
    """

    def stop(signum, frame):
        STOPS.append(signum)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    STOPS.clear()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


def wait_for_stopping_datasets(timeout: float = 30.0) -> None:
    """Let Ray Data's executor threads that are still stopping finish before the process exits.

    A dataset stopped part-way (Ctrl+C, SIGTERM, an error) goes on shutting its operators down in
    its executor thread; Ray Data waits 2 s for that, less than it takes on a busy machine. Ray's
    exit handler then shuts Ray down under the running thread, whose next call into Ray makes
    Ray's core end the process with status 1 in place of the command's own (130, 143). Ray Data
    names those threads ``StreamingExecutor-<dataset>``.
    """
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name.startswith("StreamingExecutor"):
            thread.join(max(0.0, deadline - time.monotonic()))


class _Console(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` or ``sys.stderr`` is when a line is logged (a redirect,
    a test's capture), not to the stream it found when it was made."""

    def __init__(self, name: str):
        super().__init__()
        self.stream_name = name

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = getattr(sys, self.stream_name)
        super().emit(record)


def log_to_console(stage: str) -> None:
    """The command line's logging, also set up in a Tune trial that trains (a Ray worker, whose
    stdout Ray forwards to the driver's console).

    fer-ray's modules log their progress and summary lines to ``logging.getLogger(__name__)``:
    here INFO lines go to stdout as they are, warnings to stderr as ``fer-ray STAGE: ...`` like
    the command's errors. A program that imports fer-ray gets the same records and sends them
    where it likes (``logging.basicConfig(level=logging.INFO)`` prints them). A second call
    replaces the handlers of the first, so no line is printed twice.
    """
    logger = logging.getLogger("fer_ray")
    for handler in [h for h in logger.handlers if isinstance(h, _Console)]:
        logger.removeHandler(handler)
    out, err = _Console("stdout"), _Console("stderr")
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err.setLevel(logging.WARNING)
    err.setFormatter(logging.Formatter(f"fer-ray {stage}: %(message)s"))
    logger.addHandler(out)
    logger.addHandler(err)
    logger.setLevel(logging.INFO)


@contextmanager
def kept_signal_handlers(*signums: int):
    """Put back, after the block, the Python handlers the program had for ``signums``.

    Ray installs handlers of its own and leaves them behind: ``ray.init`` for SIGTERM (Python's,
    then its C++ core's failure handler, which prints a stack dump and aborts: exit status -6),
    Ray Tune's fit for SIGINT and SIGUSR1 (so the first Ctrl+C after a sweep, in the training
    that follows it in the pipeline, only printed "Stop signal received" and was lost). A handler
    the program installed wins; where it had none for SIGTERM (the default action), Ray's stays.
    Signal handlers belong to the main thread; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {signum: signal.getsignal(signum) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            if callable(handler):
                signal.signal(signum, handler)


class Interrupted(RuntimeError):
    """Work stopped part-way that a rerun of the same command resumes (the message says so).

    Here, in a module the command line imports anyway, so that ``fer-ray`` can answer any
    stage's interruption with exit status 130 without importing Ray Tune to recognise it.
    """


def init_ray(num_cpus: int | None = None, address: str | None = None) -> None:
    """Start or join Ray once per process; later calls are no-ops."""
    import ray

    if ray.is_initialized():
        return
    # Ray runs the hook in each of its worker processes as they start, on every node.
    quiet = {} if VERBOSE else {"runtime_env": {"worker_process_setup_hook": f"{__name__}.quiet_ray_worker"}}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
        try:
            with kept_signal_handlers(signal.SIGTERM):
                ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, **quiet)
        except ConnectionError as exc:  # e.g. RAY_ADDRESS=auto with no cluster on this machine
            raise ClusterUnreachable(f"RAY_ADDRESS={address}: {str(exc).strip().splitlines()[0]}") from None
        _quiet_ray_driver()
        return
    # address="local": without it Ray 2.60 joins any cluster someone started with `ray start`
    # on this machine (and then refuses num_cpus), instead of the local Ray promised above.
    # Ray Train's placement-group cleaner looks the cluster up from inside a worker through the
    # State API: with RAY_ADDRESS pointing at our GCS (whose port we choose) and the dashboard
    # running, it finds this Ray instead of failing with a traceback in every training run, or
    # finding another Ray on the same machine.
    # Errors only while it starts: "Token authentication is enabled for this Ray cluster", the
    # local Ray's default, is a warning for cluster operators; Ray's warnings come back after.
    port = free_port()
    with environ(RAY_GCS_SERVER_PORT=str(port), RAY_ADDRESS=f"{ray.util.get_node_ip_address()}:{port}"), \
            kept_signal_handlers(signal.SIGTERM):
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True,
                 logging_level=logging.WARNING if VERBOSE else logging.ERROR, **quiet)
    logging.getLogger("ray").setLevel(logging.WARNING)
    _quiet_ray_driver()


def _quiet_ray_driver() -> None:
    """In this process, unless VERBOSE: no Ray Data progress bars (in a terminal) or progress
    log blocks (elsewhere), Ray Data's console logger shows errors only, Serve's its warnings.

    Errors, not warnings: Ray Data's warnings name its own knobs (DataContext settings, e.g. how
    to turn the progress bars back on), which a fer-ray user does not hold; they, and its INFO
    lines, still go to the session's ray-data.log. Datasets carry the DataContext they were made
    with, so the Ray Data runs inside Ray Train workers (SplitCoordinator) draw no bars either.
    """
    if VERBOSE:
        return
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):  # the console; its file handlers keep everything
            handler.setLevel(logging.ERROR)
    # Serve sets its driver-side logger (console only: "Application ... is ready", "Deleting app")
    # up when it is imported, which the serve stage has done by now; other stages never import it.
    if "ray.serve" in sys.modules:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)


def quiet_ray_worker() -> None:
    """Ray's worker_process_setup_hook when not VERBOSE: what each worker process writes to its
    console is forwarded to the driver's, so it too is kept to errors.

    Ray Data reconfigures its loggers in a worker for every dataset, from RAY_DATA_LOG_LEVEL (which
    applies to its worker-side log files too, unlike the driver's console-only setting above).
    Ray's deprecation warnings here come from Ray's own libraries calling each other (Ray Train's
    dataset manager), nothing fer-ray's user can change. Ray Train's lines are quieted through its
    RunConfig (``train_logging``): it sets up its loggers after this hook, and leaves alone the one
    Ray Train 2.60 names by its file's path instead of ``ray.train...`` (its "Reporting training
    result ..." line per report), which is quieted here.
    """
    import ray
    from ray.util.annotations import RayDeprecationWarning

    # A setting of the user's own (in the job's environment) wins.
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    # Serve's controller, proxies and replicas then log to their files under logs/serve only.
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    warnings.filterwarnings("ignore", category=RayDeprecationWarning)
    reporter = os.path.join(os.path.dirname(ray.__file__), "train", "v2", "_internal", "execution", "context.py")
    logging.getLogger(reporter).setLevel(logging.WARNING)


def train_logging():
    """Ray Train's LoggingConfig: its controller's and workers' INFO lines ("Started training worker
    group", "Checkpoint successfully created", ...) on the console only with VERBOSE. fer-ray's own
    ``[train]`` progress lines are prints, which this leaves alone."""
    from ray.train import LoggingConfig

    return LoggingConfig(log_level="INFO" if VERBOSE else "WARNING")


class ClusterUnreachable(FerRayError):
    """RAY_ADDRESS names a cluster that is not there: one line for the user, not a traceback."""


def _check_reachable(address: str) -> None:
    """A GCS address (``host:port``) that nobody answers at would have ``ray.init`` retry for
    minutes, logging the same line again and again: try the port once, for a few seconds."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", ray:// and http:// addresses: ray.init reports those itself
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ClusterUnreachable(f"no Ray cluster answers at RAY_ADDRESS={address} ({exc}); start one "
                                 "(`ray start --head`, cluster/local.sh) or unset RAY_ADDRESS for a local Ray") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@contextmanager
def environ(**values: str):
    """Set environment variables for the ``with`` block, then restore this process's own
    environment (e.g. while the local Ray starts, so that its processes and every worker they
    spawn inherit them)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cluster_capacity() -> dict[str, float]:
    """Resources the cluster has now or, under an autoscaler (KubeRay, the cluster launcher),
    can scale up to, whichever is more.

    Sizing from the live nodes alone would refuse ``--gpu`` while a GPU worker group is scaled
    to zero, and run a sweep one trial at a time on a head that takes no work. Ray 2.60 has no
    public call for this: the one asked for (``ray.max_cluster_resources()``, ray-project/ray#49501)
    became the autoscaler's config in the GCS (#49568), read only through ``ray._private.state``,
    as Ray Train (checking its worker groups against the same figure) and Ray Data read it too.
    """
    import ray
    from ray._private.state import state

    now = dict(ray.cluster_resources())
    most = state.get_max_resources_from_cluster_config() or {}
    return {key: max(now.get(key, 0), most.get(key, 0)) for key in set(now) | set(most)}


def require_gpus(count: float) -> None:
    """Refuse ``--gpu`` up front when the cluster cannot ever hold ``count`` GPUs: a Train
    worker, Serve replica or actor asking for a GPU that never comes waits for ever."""
    have = cluster_capacity().get("GPU", 0)
    if have < count:
        raise FerRayError(f"--gpu needs {count:g} GPU(s) but the Ray cluster has {have:g} "
                          "(and cannot scale up to more)")


def default_cpus_per_worker(workers: int) -> int:
    """CPUs per Train worker when the user names none: the cluster's CPUs shared equally among
    the workers, but no more than the biggest node has (a worker lives on one node), and at least
    one. One worker on a laptop then trains on every core, not on one of them; Ray sets each
    worker's torch threads (OMP_NUM_THREADS) to what it was given."""
    import ray

    total = cluster_capacity().get("CPU", 0)
    biggest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=0)
    share = total / workers
    return max(1, int(min(share, biggest) if biggest else share))


def require_cpus(count: float, what: str) -> None:
    """Refuse work whose CPU request the cluster can never meet (``what`` says whose): Ray
    Train's worker group would wait for it for ever, retrying its start every minute."""
    have = cluster_capacity().get("CPU", 0)
    if have < count:
        raise FerRayError(f"{what} need {count:g} CPUs but the Ray cluster has {have:g} (and cannot scale up to more)")


def map_batches_on_actors(ds, fn, size: int, **kwargs):
    """``ds.map_batches(fn, ...)`` on a fixed pool of ``size`` actors that are never restarted.

    Ray Data 2.60 hands every pool actor its context and transform through the object store, and
    Ray's core logs an error for each such actor that may restart (ray-project/ray#57733): one
    alarming line on every successful run. A restart buys fer-ray's pools little: a run that
    loses an actor (its node gone) fails, and rerunning the command resumes (score keeps its
    finished parts) or redoes the stage. ``max_restarts`` is no named parameter of
    ``map_batches`` yet, and passing it as a remote argument warns of a deprecation every time.
    """
    import ray

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(fn, compute=ray.data.ActorPoolStrategy(size=size), max_restarts=0, **kwargs)
