"""Install the backend's Python packages into Slicer on first use, after the user agrees.

PyTorch comes from the PyTorch extension (``PyTorchUtils``, which picks the CUDA build that
matches the driver); the rest from ``Resources/requirements.txt`` with ``pip``. Slicer's own
numpy, SimpleITK and vtk are never replaced: a constraints file pins the installed versions
(pip then fails rather than swap them). Checks use package metadata only, so torch and MONAI
are never imported into the Slicer process.

``find_missing`` and ``protected_constraints`` are plain Python; ``ensure_dependencies`` needs
the Slicer application.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable

__all__ = [
    "REQUIREMENTS_FILE",
    "PROTECTED_PACKAGES",
    "TORCH_REQUIREMENT",
    "EXPORT_REQUIREMENTS",
    "TRIANGLE_REQUIREMENTS",
    "read_requirements",
    "find_missing",
    "torch_installed",
    "protected_constraints",
    "ensure_dependencies",
]

REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"

#: Packages Slicer ships and that must not be reinstalled by pip.
PROTECTED_PACKAGES = ("numpy", "SimpleITK", "vtk")

#: Passed to PyTorchUtils' installer (light-the-torch chooses the CUDA/CPU build).
TORCH_REQUIREMENT = ">=2.1"

#: What "Export for training" needs in Slicer's Python besides numpy/SimpleITK: ``spinect.manifest``
#: imports the ``spinect.io`` package, which imports slicerio (checked by the tests).
EXPORT_REQUIREMENTS = ("slicerio>=1.1",)

#: What the triangle tool (``PythonSlicer -m spinect triangles``) needs besides numpy/scipy/SimpleITK:
#: ``spinect.geometry`` imports scikit-image, the heat map matplotlib, and reading the label map
#: ``spinect.io`` (slicerio). No PyTorch. Each is also in requirements.txt (checked by the tests).
TRIANGLE_REQUIREMENTS = ("scikit-image>=0.21", "matplotlib>=3.7", "slicerio>=1.1")

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def read_requirements(path: str | os.PathLike = REQUIREMENTS_FILE) -> list[str]:
    """Requirement lines of a requirements file (comments and blank lines dropped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _satisfied(requirement: str) -> bool:
    """True if ``requirement`` is installed (and its version matches, when ``packaging`` exists)."""
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"cannot parse requirement {requirement!r}")
    version = _installed_version(match.group(1))
    if version is None:
        return False
    try:
        from packaging.requirements import Requirement
    except ImportError:  # name-only check; pip sorts out versions when installing
        return True
    return Requirement(requirement).specifier.contains(version, prereleases=True)


def find_missing(requirements: Iterable[str]) -> list[str]:
    """The requirements that are not installed or have the wrong version."""
    return [r for r in requirements if not _satisfied(r)]


def torch_installed() -> bool:
    """True if ``torch`` can be imported (checked without importing it)."""
    return importlib.util.find_spec("torch") is not None


def protected_constraints(folder: str | os.PathLike | None = None) -> Path:
    """Write a pip constraints file pinning the installed :data:`PROTECTED_PACKAGES`."""
    pins = [f"{name}=={v}" for name in PROTECTED_PACKAGES if (v := _installed_version(name))]
    handle, path = tempfile.mkstemp(prefix="SpineCTSegmentation-constraints-", suffix=".txt", dir=folder)
    with os.fdopen(handle, "w") as f:
        f.write("\n".join(pins) + "\n")
    return Path(path)


def ensure_dependencies(
    *,
    confirm: Callable[[str], bool],
    requirements: Iterable[str] | None = None,
    include_torch: bool = True,
) -> bool:
    """Install what is missing, after ``confirm(message)`` returns True.

    Args:
        confirm: asks the user; gets the list of packages to install.
        requirements: pip requirements (default: ``Resources/requirements.txt``).
        include_torch: also make sure PyTorch is installed (through the PyTorch extension).

    Returns:
        True when everything is installed; False when the user declined.

    Raises:
        RuntimeError: the PyTorch extension is missing, or an installation failed.
    """
    requirements = list(read_requirements() if requirements is None else requirements)
    missing = find_missing(requirements)
    need_torch = include_torch and not torch_installed()
    if not missing and not need_torch:
        return True
    items = (["PyTorch (through the PyTorch extension)"] if need_torch else []) + missing
    message = (
        "SpineCTSegmentation needs these Python packages, which are not installed yet:\n\n  "
        + "\n  ".join(items)
        + "\n\nDownload and install them now? This can take several minutes (PyTorch with CUDA is "
        "a large download); Slicer's own numpy, SimpleITK and VTK are kept."
    )
    if not confirm(message):
        return False
    if need_torch:
        _install_torch()
    if missing:
        _pip_install(missing)
    still_missing = find_missing(requirements) + (["torch"] if include_torch and not torch_installed() else [])
    if still_missing:
        raise RuntimeError(f"installation finished but {', '.join(still_missing)} is still missing; restart Slicer and try again")
    return True


def _install_torch() -> None:
    try:
        import PyTorchUtils
    except ImportError as exc:
        raise RuntimeError(
            "the PyTorch extension is not installed: install 'PyTorch' from the Extensions Manager, "
            "restart Slicer, then click Segment again"
        ) from exc
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
    if torch is None:
        raise RuntimeError("PyTorch was not installed; install it from the PyTorch Utils module, then try again")


def _pip_install(requirements: list[str]) -> None:
    import slicer

    constraints = protected_constraints()
    try:
        packaging = getattr(slicer, "packaging", None)
        if packaging is None:
            try:
                import slicer.packaging as packaging  # Slicer 5.12+
            except ImportError:
                packaging = None
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            packaging.pip_ensure(
                requirements, constraints=str(constraints), prompt_install=False, skip_in_testing=False,
                requester="SpineCTSegmentation",
            )
        else:  # Slicer 5.10: pip_install takes only a list of pip arguments
            slicer.util.pip_install(["-c", str(constraints)] + requirements)
    finally:
        constraints.unlink(missing_ok=True)
