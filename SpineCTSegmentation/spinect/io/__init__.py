"""Image input and output: CT volumes in, label maps and Slicer segmentations out.

* :func:`read_ct` reads NIfTI, NRRD, MetaImage or a DICOM series as float32 HU and checks it is
  a 3D CT (:func:`validate_ct`).
* :func:`read_labelmap` reads a label image or a 3D Slicer ``.seg.nrrd`` (segments matched by name).
* :func:`write_labelmap` writes a label image or a ``.seg.nrrd``; :func:`write_image` any image;
  both atomically (:func:`atomic_output`).
"""

from spinect.io.atomic import atomic_output, check_output_path, full_suffix
from spinect.io.labels import (
    LABEL_FILE_SUFFIXES,
    SEGMENT_STYLES,
    SegmentStyle,
    check_labelmap,
    labelmap_to_segmentation,
    read_labelmap,
    segmentation_to_labelmap,
)
from spinect.io.reading import CT_FILE_SUFFIXES, image_info, read_ct, validate_ct
from spinect.io.writing import IMAGE_OUTPUT_SUFFIXES, LABEL_OUTPUT_SUFFIXES, write_image, write_labelmap

__all__ = [
    "read_ct",
    "validate_ct",
    "image_info",
    "read_labelmap",
    "check_labelmap",
    "labelmap_to_segmentation",
    "segmentation_to_labelmap",
    "write_labelmap",
    "write_image",
    "atomic_output",
    "check_output_path",
    "full_suffix",
    "SegmentStyle",
    "SEGMENT_STYLES",
    "CT_FILE_SUFFIXES",
    "LABEL_FILE_SUFFIXES",
    "LABEL_OUTPUT_SUFFIXES",
    "IMAGE_OUTPUT_SUFFIXES",
]
