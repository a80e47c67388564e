"""Run under torchrun by the distributed test: one process group for `CMD ... --then CMD ... [--then ...]`.

The group is created here, so the engine joins it instead of creating (and tearing down) its own;
that also covers embedding the engine in a program that manages distributed state itself.
"""
import sys

import torch.distributed as dist

from uniformer.cli import main

if __name__ == "__main__":
    commands, current = [], []
    for arg in sys.argv[1:]:
        if arg == "--then":
            commands.append(current)
            current = []
        else:
            current.append(arg)
    commands.append(current)
    dist.init_process_group("gloo")
    code = 0
    try:
        for command in commands:
            code = code or main(command)
    finally:
        dist.destroy_process_group()
    sys.exit(code)
