"""Helpers of the SpineCTSegmentation Slicer module.

Kept out of ``SpineCTSegmentation.py`` because Slicer treats every ``.py`` file in a module
folder as a module. Nothing here imports Qt, torch, MONAI or scikit-image: ``process``,
``terminology``, ``options`` and ``view`` (camera maths) are plain Python/numpy; ``mrml_io``,
``pipeline``, ``triangles`` and ``uncertainty`` need only Slicer's MRML classes, so they run in
Slicer and under pytest with the ``slicer-core`` wheel; ``dependencies`` needs the Slicer
application.
"""
