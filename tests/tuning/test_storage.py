"""Sweeps on database storages: several workers on one study, and workers that die.

The PostgreSQL tests need a server: ``.ci/with-postgres`` (run by CI's ``.ci/run``)
starts a throw-away one and exports its URL as ``T7SYNTH_TEST_POSTGRES_URL``;
without it the two-worker test skips and the killed-worker test runs on SQLite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import yaml

from t7synth import sweep as sweep_command
from t7synth.cli import run_main
from t7synth.tuning import storage as storage_module

POSTGRES_ENV = "T7SYNTH_TEST_POSTGRES_URL"

# A stand-in for fit: marks itself running, logs its trial once, waits until
# ``wait_for`` trials have started (so two workers surely overlap), then writes the
# validation value 20 + 1000 * lr to metrics.csv and ends.
FAKE_FIT = """
import csv, os, sys, time
shared, name, lr, linger, wait_for = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
run = os.environ["T7SYNTH_RUN_DIR"]
os.makedirs(run, exist_ok=True)
running = os.path.join(shared, "running")
os.makedirs(running, exist_ok=True)
open(os.path.join(running, name), "w").close()
with open(os.path.join(shared, "ran.log"), "a") as log:
    log.write(name + "\\n")
deadline = time.time() + 60
while len(os.listdir(running)) < wait_for and time.time() < deadline:
    time.sleep(0.05)
time.sleep(linger)
with open(os.path.join(run, "metrics.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["epoch", "step", "val/psnr_brain"])
    writer.writerow([0, 9, 20 + 1000 * lr])
"""

# One sweep worker (python -m t7synth.sweep) whose trials run FAKE_FIT instead of fit;
# ``owner`` other than "-" poses as a worker on another machine, which no other worker
# can judge by its process id: only the heartbeat tells that it died.
WORKER = """
import sys
from t7synth.tuning import study
shared, fake, owner, linger, wait_for = sys.argv[1:6]
study.fit_command = lambda sweep, options, overrides: [
    sys.executable, fake, shared, overrides["name"], overrides["optim.lr"], linger, wait_for]
if owner != "-":
    study.owner_tag = lambda: owner
from t7synth.tuning import workers
workers.PROGRAM = [sys.argv[0], *sys.argv[1:6]]  # --workers starts this stand-in too
from t7synth import sweep
from t7synth.cli import run_main
sys.exit(run_main(sweep.main, sys.argv[6:]))
"""


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(
            f"{POSTGRES_ENV} is not set: run the tests under .ci/with-postgres (CI's .ci/run does), which starts a "
            "throw-away PostgreSQL server"
        )
    return url


@pytest.fixture
def storage_url(tmp_path) -> str:
    """The PostgreSQL server when there is one, else SQLite: the same RDB storage code,
    so the heartbeat is tested everywhere (each run of a dead worker costs seconds)."""
    return os.environ.get(POSTGRES_ENV) or f"sqlite:///{tmp_path / 'optuna.db'}"


class Sweep:
    """A sweep file and the worker processes running it."""

    def __init__(self, tmp_path: Path, storage: str, n_trials: int):
        self.tmp, self.storage = tmp_path, storage
        self.shared = tmp_path / "shared"
        self.shared.mkdir()
        self.name = f"t{uuid.uuid4().hex[:12]}"  # a fresh study in a shared database
        spec = {
            "study": self.name,
            "model": "unet",
            "n_trials": n_trials,
            "set": {"runs_dir": str(tmp_path / "runs"), "trainer.max_epochs": 1},
            "sampler": {"name": "random"},
            "pruner": {"name": "none"},
            "params": {"optim.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}},
        }
        self.file = tmp_path / "sweep.yaml"
        self.file.write_text(yaml.safe_dump(spec))
        (tmp_path / "fake_fit.py").write_text(FAKE_FIT)
        (tmp_path / "worker.py").write_text(WORKER)

    def start(
        self, owner: str = "-", linger: float = 0.0, wait_for: int = 0, name: str = "worker", extra=None
    ) -> subprocess.Popen:
        command = [
            sys.executable,
            str(self.tmp / "worker.py"),
            str(self.shared),
            str(self.tmp / "fake_fit.py"),
            owner,
            str(linger),
            str(wait_for),
            str(self.file),
            "--storage",
            self.storage,
            "--heartbeat",
            "1",
            "--poll",
            "0.1",
            *(extra or ["--seed", str(len(name))]),
        ]
        log = open(self.tmp / f"{name}.log", "w")
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def study(self):
        import optuna

        return optuna.load_study(study_name=self.name, storage=self.storage)

    def ran(self) -> list[str]:
        path = self.shared / "ran.log"
        return path.read_text().split() if path.is_file() else []


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_killed_worker_leaves_its_trial_failed(tmp_path, storage_url):
    """SIGKILL a worker mid-trial: its trial stays RUNNING until its heartbeat is
    older than the grace period; the next worker then marks it FAIL and goes on."""
    import optuna

    sweep = Sweep(tmp_path, storage_url, n_trials=1)
    doomed = sweep.start(owner="elsewhere:1", linger=120, name="doomed")
    try:

        def running_trial():
            try:
                trials = sweep.study().get_trials(states=(optuna.trial.TrialState.RUNNING,))
            except KeyError:  # the study is not created yet
                return None
            return trials[0] if trials and "pid" in trials[0].user_attrs else None

        trial = _wait(running_trial, 120, "the first worker's trial to run")
    finally:
        doomed.kill()
        doomed.wait()
    os.killpg(trial.user_attrs["pid"], signal.SIGKILL)  # its fit, in a session of its own
    assert sweep.study().trials[0].state == optuna.trial.TrialState.RUNNING  # nobody told the study

    time.sleep(3.5)  # past the grace period: twice the 1 s heartbeat
    survivor = sweep.start(name="survivor")
    assert survivor.wait(timeout=180) == 0, sweep.log("survivor")
    assert f"trial {trial.number}: no heartbeat" in sweep.log("survivor")
    states = [t.state for t in sweep.study().trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path, postgres_url):
    """Two workers on one PostgreSQL study: every trial runs once, none is lost,
    and both workers take part."""
    import optuna

    n_trials = 4
    sweep = Sweep(tmp_path, postgres_url, n_trials=n_trials)
    # wait_for=2: the first trials wait until two have started, so the workers overlap.
    workers = [sweep.start(wait_for=2, name=f"worker{i}") for i in range(2)]
    for index, worker in enumerate(workers):
        assert worker.wait(timeout=240) == 0, sweep.log(f"worker{index}")

    every = sweep.study().trials
    assert [t.number for t in every] == list(range(len(every)))
    # Both workers have the same seed here (len(name)): repeats of an earlier trial's
    # parameters are skipped (t7synth.tuning.distinct), not run.
    trials = [t for t in every if "duplicate_of" not in t.user_attrs]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # Each worker checks the count before asking, so both may start the last one.
    assert n_trials <= len(trials) <= n_trials + 1
    names = [f"trial-{t.number:04d}" for t in trials]
    assert sorted(sweep.ran()) == names  # each trial's fit ran exactly once
    assert len({t.user_attrs["run_dir"] for t in trials}) == len(trials)
    assert len({t.user_attrs["owner"] for t in trials}) == 2
    for t in trials:
        assert t.value == pytest.approx(20 + 1000 * t.params["optim.lr"], rel=1e-6)


def test_stale_heartbeat_fails_only_that_trial(tmp_path):
    """In one process: a trial whose heartbeat stopped is failed, one still beating is not."""
    import optuna

    spec = type("Spec", (), {})()
    spec.study, spec.direction, spec.path = "s", "maximize", tmp_path / "sweep.yaml"
    spec.make_sampler = lambda seed: optuna.samplers.RandomSampler(seed)
    spec.make_pruner = lambda: optuna.pruners.NopPruner()
    study = storage_module.open_study(
        spec, f"sqlite:///{tmp_path / 'o.db'}", tmp_path / "runs", 0, heartbeat_interval=1
    )
    with pytest.warns(UserWarning, match="Heartbeat of storage"):  # Optuna's note: meant for optimize
        dead, alive = study.ask(), study.ask()
    with storage_module.heartbeat(study, dead):
        pass  # one beat, then its worker "dies"
    with storage_module.heartbeat(study, alive):
        time.sleep(4.0)  # past the 2 s grace period; SQLite's clock has 1 s steps
        lines = storage_module.fail_stale_trials(study)
    assert len(lines) == 1 and f"trial {dead.number}: no heartbeat" in lines[0]
    states = {t.number: t.state for t in study.trials}
    assert states == {dead.number: optuna.trial.TrialState.FAIL, alive.number: optuna.trial.TrialState.RUNNING}


def test_no_heartbeat_without_interval(tmp_path):
    """``--heartbeat 0``: nothing beats, nothing is ever failed as stale."""
    import optuna

    storage = storage_module.database_storage(f"sqlite:///{tmp_path / 'o.db'}", 0)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    with storage_module.heartbeat(study, trial):
        pass
    assert storage_module.fail_stale_trials(study) == []
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING


@pytest.mark.parametrize(
    ("storage", "named"),
    [
        ("postgresql://nobody@/nowhere?host=/nonexistent-socket-dir", "cannot open the database"),
        ("nosuchdb://x/y", "--storage nosuchdb://x/y"),
    ],
    ids=["unreachable", "unknown-scheme"],
)
def test_bad_database_is_one_line(tmp_path, capsys, storage, named):
    path = tmp_path / "s.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        model: unet
        set: {{runs_dir: {tmp_path / "runs"}}}
        params:
          optim.lr: {{type: float, low: 1.0e-4, high: 1.0e-3}}
    """)
    )
    assert run_main(sweep_command.main, [str(path), "--storage", storage]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err


def test_fit_of_a_trial_failed_elsewhere_is_stopped_here(tmp_path):
    """A worker elsewhere failed the trial (stale heartbeat) while its fit went on on
    this machine: the next sweep here stops that fit, and tells nothing to the study."""
    import socket

    import optuna

    from t7synth.training.launch import RUN_DIR_ENV

    study = optuna.create_study()
    dead_sweep = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_sweep.wait()
    run_dir = tmp_path / "trial-0000" / "version_0"
    fit = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        env=dict(os.environ, **{RUN_DIR_ENV: str(run_dir)}),
        start_new_session=True,
    )
    try:
        trial = study.ask()
        trial.set_user_attr("owner", f"{socket.gethostname()}:{dead_sweep.pid}")
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("pid", fit.pid)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # what fail_stale_trials did elsewhere
        lines = storage_module.fail_orphaned_trials(study)
        assert len(lines) == 1 and "trial 0: failed" in lines[0] and "fit was stopped" in lines[0]
        assert fit.wait(timeout=40) is not None
        assert study.trials[0].state == optuna.trial.TrialState.FAIL
        assert storage_module.fail_orphaned_trials(study) == []  # nothing left to stop
    finally:
        if fit.poll() is None:
            fit.kill()


def _summary_run_ids(root: Path) -> set[str]:
    """The W&B run ids of a study's summary runs (offline: one folder per process that wrote one)."""
    return {path.stem.removeprefix("run-") for path in root.glob("wandb/offline-run-*/run-*.wandb")}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workers_with_one_seed_never_repeat_parameters_and_keep_one_summary(tmp_path, backend, monkeypatch):
    """Two workers with the SAME sampler seed on one study: no two trials share their
    parameters, and the study has exactly one summary (trials.csv, one W&B summary run id)
    after both end and after a rerun."""
    import optuna

    if backend == "postgresql":
        url = os.environ.get(POSTGRES_ENV)
        if not url:
            pytest.skip(f"{POSTGRES_ENV} is not set: run under .ci/with-postgres")
    else:
        url = f"sqlite:///{tmp_path / 'optuna.db'}"
    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    n_trials = 4
    sweep = Sweep(tmp_path, url, n_trials=n_trials)
    spec = yaml.safe_load(sweep.file.read_text())
    spec["sampler"] = {"name": "tpe", "n_startup_trials": 10}  # seeded: the same seed draws the same values
    sweep.file.write_text(yaml.safe_dump(spec))
    extra = ["--wandb", "offline", "--seed", "5"]
    workers = [sweep.start(wait_for=2, name=f"worker{i}", extra=extra) for i in range(2)]
    for index, worker in enumerate(workers):
        assert worker.wait(timeout=240) == 0, sweep.log(f"worker{index}")

    trials = sweep.study().trials
    run = [t for t in trials if "duplicate_of" not in t.user_attrs]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in run)
    values = [t.params["optim.lr"] for t in run]
    assert len(values) == len(set(values)) >= n_trials  # nobody evaluated the same parameters twice
    assert sorted(sweep.ran()) == sorted(f"trial-{t.number:04d}" for t in run)
    root = tmp_path / "runs" / sweep.name
    assert len(list(root.glob("trials.csv"))) == 1
    assert len(_summary_run_ids(root)) == 1
    # The same seed drew the same first values: the repeat was skipped, not run.
    assert any("duplicate_of" in t.user_attrs for t in trials)

    rerun = sweep.start(name="rerun", extra=extra)  # the study is finished: it only summarises again
    assert rerun.wait(timeout=240) == 0, sweep.log("rerun")
    assert len(_summary_run_ids(root)) == 1
    assert len(list(root.glob("wandb/offline-run-*"))) == 3  # three summaries written, all to that run


@pytest.mark.slow
def test_sweep_workers_starts_its_own_workers_on_one_journal(tmp_path):
    """``--workers 2``: one command, two processes on the default journal file; every trial
    once, distinct parameters, both workers took part, one trials.csv."""
    import optuna

    sweep = Sweep(tmp_path, "unused", n_trials=4)
    command = [
        sys.executable,
        str(tmp_path / "worker.py"),
        str(sweep.shared),
        str(tmp_path / "fake_fit.py"),
        "-",
        "0",
        "2",
        str(sweep.file),
        "--poll",
        "0.1",
        "--workers",
        "2",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "started 1 more worker(s)" in done.stdout
    root = tmp_path / "runs" / sweep.name
    study = optuna.load_study(
        study_name=sweep.name,
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(root / "optuna.journal"))
        ),
    )
    run = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    assert len({t.params["optim.lr"] for t in run}) == len(run) >= 4
    assert len({t.user_attrs["owner"] for t in run}) == 2  # both processes ran trials
    assert (root / "worker-1.log").is_file() and len(list(root.glob("trials.csv"))) == 1
