"""Whole slides: readers (OpenSlide, tifffile, Pillow), tissue detection, tiling with seamless blending,
the resumable slide pipeline behind ``tissueseg predict``, and its outputs (pyramidal class-map TIFF,
GeoJSON, area tables, overlay, HTML report)."""

from tissueseg.slides.outputs import NO_TISSUE, write_pyramidal_tiff
from tissueseg.slides.predict import (BatchResult, PredictOptions, predict_slide, predict_slides, shard)
from tissueseg.slides.readers import SlideError, SlideReader, open_slide, openslide_available
from tissueseg.slides.tiling import BlendAccumulator, SlideTileDataset, TileGrid, blend_window
from tissueseg.slides.tissue import TissueIndex, detect_tissue

__all__ = [
    "NO_TISSUE", "BatchResult", "BlendAccumulator", "PredictOptions", "SlideError", "SlideReader",
    "SlideTileDataset", "TileGrid", "TissueIndex", "blend_window", "detect_tissue", "open_slide",
    "openslide_available", "predict_slide", "predict_slides", "shard", "write_pyramidal_tiff",
]
