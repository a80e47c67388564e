"""`python -m kill_driver ARGS`: the `uniformer` command line, SIGKILLed as it loads its N-th training sample
(N = $UF_TEST_KILL_AFTER_ITEMS): a hard kill in the middle of a dense-task run, for the resume test."""
import os
import signal
import sys

from uniformer.cli import main
from uniformer.tasks.segmentation.data import SegDataset

if __name__ == "__main__":
    limit = int(os.environ["UF_TEST_KILL_AFTER_ITEMS"])
    load = SegDataset.__getitem__
    served = []

    def counted(self, index):
        if self.train:
            served.append(index)
            if len(served) >= limit:
                os.kill(os.getpid(), signal.SIGKILL)
        return load(self, index)

    SegDataset.__getitem__ = counted
    sys.exit(main(sys.argv[1:]))
