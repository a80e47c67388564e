"""UniFormer networks; importing this package registers every variant in timm's registry."""
from .checkpoint import CheckpointError, identify_variant, inflate_weight, load_checkpoint, read_checkpoint
from .depthwise import use_shifted_taps
from .fuse import fuse
from .layers import DynamicPositionEmbedding, GlobalBlock, GlobalMHRA, LocalBlock
from .uniformer import UniFormer
from .uniformer_light import EvolvingGlobalBlock, UniFormerLight

__all__ = [
    "UniFormer", "UniFormerLight", "LocalBlock", "GlobalBlock", "GlobalMHRA", "EvolvingGlobalBlock",
    "DynamicPositionEmbedding", "CheckpointError", "load_checkpoint", "read_checkpoint", "identify_variant",
    "inflate_weight", "fuse", "use_shifted_taps",
]
