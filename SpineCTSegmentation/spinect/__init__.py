"""spinect: lumbosacral bone and nerve segmentation on CT (SPINECT 3D U-Net).

The backend of the SpineCTSegmentation 3D Slicer extension. It imports no Slicer and no Qt,
so it runs the same inside Slicer (through its CLI in a subprocess), from a shell and from Python.

Array convention everywhere: NumPy arrays are indexed (z, y, x) as SimpleITK's
``GetArrayFromImage`` returns them; spacings given as ``spacing_zyx_mm`` follow that order,
``spacing_xyz_mm`` follow SimpleITK's (x, y, z) order.
"""

from spinect.errors import InputError, ModelError, OutputError, SpinectError

__version__ = "0.1.0"

__all__ = ["SpinectError", "InputError", "OutputError", "ModelError", "__version__"]
