"""Training under torchrun beyond one plain launch: a worker killed and the group restarted (`--max-restarts`), two
nodes joined through the c10d rendezvous, and processes that disagree on the recipe or the data.

All on localhost with gloo and the toy model; every launch has a timeout, so a hang fails instead of blocking.
"""
from __future__ import annotations

import contextlib
import csv
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
import torch
from engine_helpers import subprocess_env, tiny_recipe, write_recipe

TIMING = ("samples_per_second",)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def _rows(path):
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def _launch(torchrun_args: list[str], args: list[str], cwd, **env) -> subprocess.Popen:
    """torchrun in a session of its own, so that a hung launch is killed with its workers."""
    return subprocess.Popen([*TORCHRUN, *torchrun_args, "-m", "elastic_driver", *args], cwd=cwd,
                            env=subprocess_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish within {timeout} s:\n{out[-2000:]}{err[-4000:]}")
    return proc.returncode, out + err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _same_run(a, b) -> None:
    """Two run folders hold the same run: every logged row and the final weights equal."""
    assert _rows(a / "metrics.csv") == _rows(b / "metrics.csv")
    wa, wb = (torch.load(p / "last.pt", weights_only=True)["model"] for p in (a, b))
    for key in wb:
        assert torch.equal(wa[key], wb[key]), key


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The reference: 1 node x 2 processes, uninterrupted. 4 epochs of 3 steps, a checkpoint after each epoch."""
    root = tmp_path_factory.mktemp("elastic")
    recipe = write_recipe(root / "recipe.yaml", tiny_recipe(train={"epochs": 4, "batch_size": 2},
                                                            checkpoint={"keep_last": 2, "every": 1}))
    code, output = _finish(_launch(["--standalone", "--nproc_per_node=2"],
                                   ["train", str(recipe), "--out", str(root / "straight"), "--no-progress",
                                    "--device", "cpu"], root))
    assert code == 0, output[-4000:]
    return root, recipe


def test_a_killed_worker_restarts_the_group_which_resumes_to_the_uninterrupted_run(straight):
    root, recipe = straight
    out = root / "elastic"
    # rank 1 SIGKILLs itself as it loads its 10th training sample: in step 5, after the step-3 checkpoint
    code, output = _finish(_launch(["--standalone", "--nproc_per_node=2", "--max-restarts=1"],
                                   ["train", str(recipe), "--out", str(out), "--no-progress", "--device", "cpu",
                                    "--resume", "auto"], root, UF_TEST_ELASTIC_KILL="10"), timeout=300)
    assert code == 0, output[-4000:]
    assert "exitcode: -9" in output  # the first group really lost a worker
    log = (out / "train.log").read_text()
    assert "resumed from" in log and "(step 3 of 12)" in log
    _same_run(out, root / "straight")  # each step once, the same losses and weights


def test_two_nodes_through_the_c10d_rendezvous_match_one_node(straight):
    root, recipe = straight
    out = root / "two_nodes"
    node = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}",
            "--rdzv-id=uniformer-test", "--local-addr=127.0.0.1"]
    args = ["train", str(recipe), "--out", str(out), "--no-progress", "--device", "cpu"]
    nodes = [_launch(node, args, root) for _ in range(2)]
    try:
        results = [_finish(p) for p in nodes]
    finally:
        for p in nodes:
            _kill(p)  # the other node, when one timed out
    for code, output in results:
        assert code == 0, output[-4000:]
    assert "2 process(es) on cpu" in (out / "train.log").read_text()
    _same_run(out, root / "straight")


def test_processes_that_disagree_on_the_recipe_the_data_or_the_checkpoint_stop_naming_the_difference(tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe(train={"epochs": 1, "batch_size": 2}))
    (tmp_path / "node1").mkdir()
    train = ["train", str(recipe), "--no-progress", "--device", "cpu"]
    code, output = _finish(_launch(
        ["--standalone", "--nproc_per_node=2"],
        [*train, "--out", "a", "@1:--set", "@1:optim.lr=0.02",  # rank 1 was given another override
         "@1:--driver-short-train",  # and its list file has one sample fewer
         "--then", *train, "--out", "b", "@1:--driver-short-train",  # only the list file differs
         "--then", *train, "--out", "run",  # a run of 3 steps, in a folder both processes share
         "--then", *train, "--out", "run", "--set", "train.epochs=2", "--resume", "auto",
         "@1:--driver-chdir=node1"],  # continued, but rank 1's relative --out is a folder of its own
        tmp_path, UF_TEST_EXIT_ZERO="1"))
    assert code == 0, output[-4000:]
    assert "rank 0 exit codes: [2, 2, 0, 2]" in output and "rank 1 exit codes: [2, 2, 0, 2]" in output, output[-4000:]
    # both processes write to one pipe, so two messages can share a line: each message runs to the next one
    errors = re.findall(r"(?m)(?:^|(?<=\S))error: .*?(?=error: |$)", output)
    assert len(errors) == 6, output[-4000:]  # three commands stopped, on both processes
    recipe_errors = [line for line in errors if "recipe key" in line]
    step_errors = [line for line in errors if "resumed at different steps" in line]
    data_errors = [line for line in errors if line not in recipe_errors + step_errors]
    assert len(recipe_errors) == len(step_errors) == len(data_errors) == 2
    for line in recipe_errors:
        assert "recipe key optim.lr = 0.01 on rank 0; 0.02 on rank 1" in line
        assert "train split size = 12 on rank 0; 11 on rank 1" in line
    for line in data_errors:
        assert "train split size = 12 on rank 0; 11 on rank 1" in line
        assert "val split size" not in line
    for line in step_errors:
        assert "resumed at different steps (step 3 on rank 0; 0 on rank 1)" in line
    assert not (tmp_path / "a" / "last.pt").exists() and not (tmp_path / "b" / "last.pt").exists()
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 3  # the stopped run wrote nothing
