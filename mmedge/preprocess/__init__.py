"""Raw files → named model inputs: images (Pillow), text (tokenizers), audio (soundfile), .npy.

``Preprocessor.from_recipe(recipe)`` for building calibration sets; ``Preprocessor.load(
"calibration/NAME/preprocess.json")`` on the deploy side, applying exactly what was calibrated.
"""

from mmedge.preprocess.core import FORMAT, Preprocessor
from mmedge.preprocess.errors import SampleError
from mmedge.preprocess.spec import ArrayPrep, AudioPrep, ImagePrep, LogMel, PrepSpec, TextPrep

__all__ = [
    "FORMAT",
    "ArrayPrep",
    "AudioPrep",
    "ImagePrep",
    "LogMel",
    "PrepSpec",
    "Preprocessor",
    "SampleError",
    "TextPrep",
]
