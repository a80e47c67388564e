"""Training under torchrun beyond one plain launch: a worker killed and the group restarted (`--max-restarts`), two
nodes joined through the c10d rendezvous, and processes that disagree on the recipe or the data.

All on localhost with gloo and the toy model; every launch has a timeout, so a hang fails instead of blocking.
"""
from __future__ import annotations

import csv
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


def _launch(torchrun_args: list[str], args: list[str], cwd, timeout: float = 120, **env) -> subprocess.Popen:
    return subprocess.Popen([*TORCHRUN, *torchrun_args, "-m", "elastic_driver", *args], cwd=cwd,
                            env=subprocess_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
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
                                    "--resume", "auto"], root, UF_TEST_ELASTIC_KILL="10"), timeout=150)
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
    results = [_finish(p) for p in nodes]
    for code, output in results:
        assert code == 0, output[-4000:]
    assert "2 process(es) on cpu" in (out / "train.log").read_text()
    _same_run(out, root / "straight")


def test_processes_that_disagree_on_the_recipe_or_the_data_stop_naming_the_difference(tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe(train={"epochs": 1, "batch_size": 2}))
    code, output = _finish(_launch(
        ["--standalone", "--nproc_per_node=2"],
        ["train", str(recipe), "--out", str(tmp_path / "a"), "--no-progress", "--device", "cpu",
         "@1:--set", "@1:optim.lr=0.02",  # rank 1 was given another override
         "--then", "train", str(recipe), "--out", str(tmp_path / "b"), "--no-progress", "--device", "cpu"],
        tmp_path, UF_TEST_SHORT_TRAIN_RANK="1", UF_TEST_EXIT_ZERO="1"))  # and its list file has one sample fewer
    assert code == 0, output[-4000:]
    assert "rank 0 exit codes: [2, 2]" in output and "rank 1 exit codes: [2, 2]" in output
    errors = [line for line in output.splitlines() if line.startswith("error: the 2 processes disagree")]
    assert len(errors) == 4, output[-4000:]  # both commands stopped, on both processes
    recipe_error, data_error = errors[0], errors[-1]
    assert "recipe key optim.lr = 0.01 on rank 0; 0.02 on rank 1" in recipe_error
    assert "train split size = 12 on rank 0; 11 on rank 1" in recipe_error
    assert "recipe key" not in data_error and "train split size = 12 on rank 0; 11 on rank 1" in data_error
    assert "val split size" not in data_error
    assert not (tmp_path / "a" / "last.pt").exists() and not (tmp_path / "b" / "last.pt").exists()
