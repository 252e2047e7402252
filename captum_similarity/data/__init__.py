"""Image data: the ORL faces (from a path) and scikit-image's bundled images."""

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
]
