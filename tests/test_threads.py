"""CPU threads: the default follows OMP_NUM_THREADS, SLURM_CPUS_PER_TASK, affinity and load; --threads overrides."""

from __future__ import annotations

import os

import pytest
import torch
from typer.testing import CliRunner

from rgbdface import utils
from rgbdface.cli.app import app
from rgbdface.utils import THREAD_ENV, default_threads


@pytest.fixture
def machine(monkeypatch):
    """A 4-CPU machine, no thread variables set; returns a setter for (affinity, load average)."""
    for var in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)

    def set_state(affinity: int, load: float) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))

    return set_state


@pytest.fixture
def restore_threads():
    saved_env = {v: os.environ.get(v) for v in THREAD_ENV}
    saved = torch.get_num_threads()
    yield
    for var, value in saved_env.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
    torch.set_num_threads(saved)


def test_quiet_machine_uses_every_allowed_cpu(machine):
    machine(affinity=4, load=0.2)
    assert default_threads()[0] == 4
    machine(affinity=2, load=0.0)  # taskset / cgroup: only the CPUs this process may run on
    assert default_threads()[0] == 2


def test_busy_machine_leaves_the_busy_cores_alone(machine):
    machine(affinity=4, load=1.1)  # one core held by another process
    assert default_threads()[0] == 3
    machine(affinity=4, load=9.0)  # overloaded: still one thread
    assert default_threads() == (1, "4 CPUs, load average 9.0")


def test_environment_wins(machine, monkeypatch):
    machine(affinity=4, load=9.0)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert default_threads() == (3, "SLURM_CPUS_PER_TASK")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert default_threads() == (2, "OMP_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # empty or nonsense: ignored
    assert default_threads() == (3, "SLURM_CPUS_PER_TASK")


def test_threads_option_sets_torch_and_the_environment(restore_threads, tmp_path):
    r = CliRunner().invoke(app, ["eval", "--threads", "3", "--data", str(tmp_path / "nope")])
    assert r.exit_code == 1  # the command itself fails (no dataset); the threads were set before it ran
    assert torch.get_num_threads() == 3
    assert all(os.environ[v] == "3" for v in THREAD_ENV)


def test_threads_option_must_be_positive(tmp_path):
    r = CliRunner().invoke(app, ["eval", "--threads", "0", "--data", str(tmp_path / "nope")])
    assert r.exit_code == 2


def test_use_threads_refuses_zero():
    with pytest.raises(utils.UsageError, match="--threads 0"):
        utils.use_threads(0)
