"""Run under torchrun by the elastic / multi-node tests: `CMD ... [--then CMD ...]`, every command run even after
one fails (exit status: the largest). The engine creates (and tears down) its own process group per command.

Arguments written `@R:ARG` reach only rank R (as ARG): processes given different overrides. Two arguments are
the driver's, for the command they are in: `--driver-short-train` (a training split one sample shorter: a node
whose list file differs) and `--driver-chdir=DIR` (run the command in DIR: a node whose relative --out is another
folder). UF_TEST_ELASTIC_KILL=N in the environment SIGKILLs rank 1 of the first worker group as it loads its N-th
training sample (a worker lost mid-run; the restarted group does not kill itself). Each process prints its
commands' exit codes.
"""
import os
import sys

from uniformer.cli import main

if __name__ == "__main__":
    rank = os.environ.get("RANK", "0")
    if os.environ.get("UF_TEST_ELASTIC_KILL") and rank == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
        os.environ["UF_TEST_KILL_AFTER_ITEMS"] = os.environ["UF_TEST_ELASTIC_KILL"]
    import engine_helpers

    full_length, home = engine_helpers.TinyClips.__len__, os.getcwd()

    def run(command: list[str]) -> int:
        short = "--driver-short-train" in command
        engine_helpers.TinyClips.__len__ = lambda self: full_length(self) - (short and self.split == "train")
        for arg in command:
            if arg.startswith("--driver-chdir="):
                os.chdir(arg.partition("=")[2])
        try:
            return main([arg for arg in command if not arg.startswith("--driver-")])
        finally:
            os.chdir(home)

    commands, current = [], []
    for arg in sys.argv[1:]:
        if arg == "--then":
            commands.append(current)
            current = []
        elif arg.startswith("@"):
            target, _, value = arg[1:].partition(":")
            if target == rank:
                current.append(value)
        else:
            current.append(arg)
    commands.append(current)
    codes = [run(command) for command in commands]
    print(f"rank {rank} exit codes: {codes}", flush=True)
    # UF_TEST_EXIT_ZERO: exit 0 whatever the codes, so that torchrun does not stop the other processes before they
    # have reported theirs
    sys.exit(0 if os.environ.get("UF_TEST_EXIT_ZERO") else max(codes))
