"""`uniformer benchmark --train --recipe`: the runner's step and the bare loop it is compared with do the same work."""
from __future__ import annotations

import copy
import json
import logging
import math

import pytest
import torch
from engine_helpers import tiny_recipe, write_recipe

from uniformer.cli import main
from uniformer.engine.benchmark import bare_training_step
from uniformer.engine.distributed import DistInfo
from uniformer.engine.runner import Runner
from uniformer.tasks import build_task, load_recipe


@pytest.mark.parametrize("accum", [1, 2])
def test_engine_step_and_bare_step_make_the_same_update(accum):
    # no clipping and no EMA: then the two differ only in the runner's bookkeeping
    cfg = load_recipe(tiny_recipe(train={"accum_steps": accum, "batch_size": 2}))
    task = build_task(cfg)
    runner = Runner(task, ".", show_progress=False)
    runner.setup(DistInfo())
    batches = []
    for batch in runner.train_batches(0):
        batches.append(batch)
        if len(batches) == accum:
            break
    start_model = copy.deepcopy(runner.model.state_dict())
    start_optim = copy.deepcopy(runner.optimizer.state_dict())

    runner.train_step(iter(batches), logging.getLogger("test"))
    engine = {k: v.clone() for k, v in runner.model.state_dict().items()}

    runner.model.load_state_dict(start_model)
    runner.optimizer.load_state_dict(start_optim)
    bare_training_step(task, runner.model, runner.optimizer, batches, torch.device("cpu"), runner.amp)
    bare = runner.model.state_dict()

    for key, value in start_model.items():
        assert not torch.equal(engine[key], value), f"{key} did not move"
        torch.testing.assert_close(bare[key], engine[key], rtol=1e-6, atol=1e-7, msg=key)


def test_benchmark_recipe_reports_both_steps(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(ema={"enabled": True}, train={"clip_grad": 1.0}))
    results = tmp_path / "results.jsonl"
    assert main(["benchmark", "--train", "--recipe", str(recipe), "--set", "train.batch_size=3", "--iters", "2",
                 "--rounds", "2", "--warmup", "1", "--threads", "1", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(("engine ", "bare "))}
    assert set(rows) == {"engine", "bare"} and all(float(v) > 0 for r in rows.values() for v in r)
    assert "runner overhead per step" in out
    record = json.loads(results.read_text().splitlines()[-1])
    assert record["run"] == "train-recipe" and record["task"] == "classification"
    assert record["batch_size"] == 3 and record["samples_per_step"] == 3 and record["ema"] and record["threads"] == 1
    assert record["steps"] == 2 and record["rounds"] == 2 and record["warmup"] == 1  # --iters, --rounds, --warmup
    for name in ("engine", "bare"):
        assert len(record[name]["round_ms"]) == 2
        assert record[name]["samples_per_second"] == pytest.approx(3 * record[name]["steps_per_second"])
    expected = 100 * (record["engine"]["ms_per_step"] / record["bare"]["ms_per_step"] - 1)
    assert record["best_round_overhead_percent"] == pytest.approx(expected)
    assert math.isfinite(record["overhead_percent"])
    assert record["cpu"] and record["torch"] == torch.__version__


def test_benchmark_recipe_refuses_model_flags(tmp_path):
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe())
    with pytest.raises(SystemExit, match="--batch-size"):
        main(["benchmark", "--train", "--recipe", str(recipe), "--batch-size", "4"])
    with pytest.raises(SystemExit, match="no --train"):
        main(["benchmark", "--recipe", str(recipe)])
