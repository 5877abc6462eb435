"""Portrait segmentation data: a built-in synthetic portrait generator (procedural people
over crops of bundled real photos, exact masks, hair-style labels) and a user's folder of
image/mask pairs. Both give a `PortraitSet` whose `source` says where the numbers come
from."""

from toolkit.data.portraits.dataset import UNKNOWN_ATTRIBUTE, PortraitSet
from toolkit.data.portraits.folder import load_portrait_folder
from toolkit.data.portraits.generator import draw_portrait, generate_portraits
from toolkit.data.portraits.shapes import HAIR_STYLES

__all__ = ["HAIR_STYLES", "UNKNOWN_ATTRIBUTE", "PortraitSet", "draw_portrait",
           "generate_portraits", "load_portrait_folder"]
