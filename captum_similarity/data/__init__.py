"""Image data: the ORL faces (from a path), scikit-image's bundled images and
the attribute world (generated from a seed)."""

from .attribute_world import (
    ATTRIBUTE_NAMES,
    IDENTITIES,
    RELEVANT,
    AttributeWorld,
    AttributeWorldPairs,
    attribute_world,
    attribute_world_pairs,
)
from .orl import OrlFaces, identity_split, load_orl_faces
from .pairs import astronaut_pair, notable_pairs
from .samples import bundled_images, image_to_tensor, resize_crop, stereo_crops, stereo_pair

__all__ = [
    "OrlFaces",
    "load_orl_faces",
    "identity_split",
    "bundled_images",
    "image_to_tensor",
    "stereo_pair",
    "stereo_crops",
    "resize_crop",
    "astronaut_pair",
    "notable_pairs",
    "attribute_world",
    "attribute_world_pairs",
    "AttributeWorld",
    "AttributeWorldPairs",
    "ATTRIBUTE_NAMES",
    "RELEVANT",
    "IDENTITIES",
]
