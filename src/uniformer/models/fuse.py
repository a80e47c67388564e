"""placeholder"""


def fuse(model):
    raise NotImplementedError
