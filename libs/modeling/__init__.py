"""ActionFormer network: layers, attention, blocks, backbones, necks, heads, points, detector."""
from .backbone import BACKBONES, build_backbone, register_backbone
from .detector import Detector
from .layers import AffineDropPath, ChannelLayerNorm, MaskedConv1D, Scale
from .neck import NECKS, build_neck, register_neck
from .points import PointGenerator

__all__ = ["Detector", "BACKBONES", "build_backbone", "register_backbone", "NECKS", "build_neck",
           "register_neck", "MaskedConv1D", "ChannelLayerNorm", "Scale", "AffineDropPath",
           "PointGenerator"]
