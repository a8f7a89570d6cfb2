"""Model files: weights + plan in one ``.pt`` file, plan and sha256 in a JSON sidecar.

File layout (a plain dict so that ``torch.load(weights_only=True)`` can read it)::

    {"format": "spinect-model", "format_version": 1, "plan": {...}, "state_dict": {...}}

The sidecar ``<name>.json`` holds the same plan plus ``sha256`` of the ``.pt`` file, so a
reader can inspect a model without torch and verify the download.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from spinect.errors import ModelError
from spinect.io.atomic import atomic_output
from spinect.plan import ModelPlan

__all__ = ["save_model", "load_model", "load_plan", "sha256_of_file", "sidecar_path", "default_model_path",
           "default_level_model_path", "reuse_loaded_models"]

_FORMAT = "spinect-model"
_FORMAT_VERSION = 1


def default_model_path() -> Path:
    """Where the shipped default model lives inside the package."""
    return Path(__file__).resolve().parent / "models" / "spinect_default.pt"


def default_level_model_path() -> Path:
    """Where the shipped vertebral-level model lives (used by ``segment --levels``; may be absent)."""
    return Path(__file__).resolve().parent / "models" / "spinect_levels.pt"


def sidecar_path(model_path: str | os.PathLike) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".json")


def sha256_of_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_model(path: str | os.PathLike, network: torch.nn.Module, plan: ModelPlan) -> str:
    """Write ``network``'s weights and ``plan`` atomically; return the file's sha256."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    payload = {"format": _FORMAT, "format_version": _FORMAT_VERSION, "plan": plan.to_dict(), "state_dict": state}
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    digest = sha256_of_file(path)
    sidecar = {"plan": plan.to_dict(), "sha256": digest, "file": path.name}
    with atomic_output(sidecar_path(path)) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return digest


def load_plan(path: str | os.PathLike) -> ModelPlan:
    """Read only the plan (from the model file itself).

    Raises:
        ModelError: as :func:`load_model` for an unreadable file or an invalid plan.
    """
    path = Path(path)
    return _plan_of(path, _read_payload(path))


def load_model(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    allow_untrained: bool = False,
    verify_sha256: bool = True,
) -> tuple[torch.nn.Module, ModelPlan]:
    """Build the network described by the file's plan and load its weights (eval mode).

    Raises:
        ModelError: missing/corrupt file, checksum mismatch with the sidecar, an invalid plan
            (spacing not > 0, HU window not low < high, smoothing < 0, a class count the network
            does not output), weights that do not fit the architecture, or an untrained model
            when ``allow_untrained`` is False.
    """
    from spinect.nets import build_network  # local: keeps `spinect.plan` importable without nets

    cached = _from_cache(path, device, allow_untrained, verify_sha256)
    if cached is not None:
        return cached
    path = Path(path)
    payload = _read_payload(path)
    if verify_sha256:
        _verify_sidecar(path)
    plan = _plan_of(path, payload)
    if plan.training_status == "untrained" and not allow_untrained:
        raise ModelError(
            f"model {path} is untrained (random weights) and would produce meaningless labels; "
            "train one with `spinect train` or use the default model"
        )
    try:
        network = build_network(**plan.architecture)
    except Exception as exc:  # noqa: BLE001 - unknown names or values in the stored architecture
        raise ModelError(f"model file {path} has an invalid plan: architecture {plan.architecture} ({exc})") from exc
    outputs = getattr(network, "num_classes", None)
    if outputs is not None and outputs != plan.num_classes:
        raise ModelError(
            f"model file {path} has an invalid plan: its network outputs {outputs} classes but the plan names "
            f"{plan.num_classes} ({', '.join(plan.class_names)}); labels would be misnamed or missing. Use another model "
            "or train it again"
        )
    if not isinstance(payload.get("state_dict"), dict):
        raise ModelError(f"model file {path} holds no weights ('state_dict'); it is not a usable spinect model")
    try:
        network.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ModelError(f"weights in {path} do not match its architecture {plan.architecture}: {exc}") from exc
    network.to(device).eval()
    return network, plan


#: Networks already built inside :func:`reuse_loaded_models`, by file, file state and load options.
_LOADED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("spinect_loaded_models", default=None)


@contextlib.contextmanager
def reuse_loaded_models():
    """Within the block, :func:`load_model` builds each model file once and returns the same network after.

    For ``spinect segment-batch``: one network for every case (inference never changes it; it runs
    a copy). A file replaced meanwhile (other size or modification time) is loaded again.
    """
    token = _LOADED.set({})
    try:
        yield
    finally:
        _LOADED.reset(token)


def _from_cache(path, device, allow_untrained: bool, verify_sha256: bool):
    cache = _LOADED.get()
    if cache is None:
        return None
    try:
        stat = Path(path).stat()
    except OSError:
        return None  # let the plain load name the problem
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, str(device), allow_untrained, verify_sha256)
    if key not in cache:
        token = _LOADED.set(None)
        try:
            cache[key] = load_model(path, device=device, allow_untrained=allow_untrained, verify_sha256=verify_sha256)
        finally:
            _LOADED.reset(token)
    return cache[key]


def _read_payload(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelError(f"model file {path} not found; pass --model with an existing .pt file or omit it for the default model")
    _check_archive(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise ModelError(f"cannot read model file {path} ({type(exc).__name__}: {exc}); is it a spinect model?") from exc
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ModelError(f"{path} is not a spinect model file (no '{_FORMAT}' header)")
    version = payload.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ModelError(f"{path} has format version {version!r}, not an integer; the file is damaged or not a spinect model")
    if version > _FORMAT_VERSION:
        raise ModelError(f"{path} was written by a newer spinect (format {payload['format_version']}); upgrade spinect")
    _check_finite_weights(path, payload.get("state_dict"))
    return payload


def _plan_of(path: Path, payload: dict[str, Any]) -> ModelPlan:
    """The payload's plan, checked (:class:`ModelPlan` refuses inconsistent values).

    Raises:
        ModelError: no plan, or one with invalid or inconsistent values, named in the message.
    """
    if not isinstance(payload.get("plan"), dict):
        raise ModelError(f"model file {path} holds no plan (preprocessing and architecture); it is not a usable spinect model")
    try:
        return ModelPlan.from_dict(payload["plan"])
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model file {path} has an invalid plan: {exc}; use another model or train it again") from exc


def _check_archive(path: Path) -> None:
    """torch does not check the CRCs of its zip archive: bit flips in the weights would load.

    Raises:
        ModelError: a member's CRC does not match (the file is corrupt).
    """
    import zipfile

    if not zipfile.is_zipfile(path):
        return  # legacy (non-zip) torch files: torch.load judges them
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelError(f"model file {path} is damaged ({exc}); download or train it again") from exc
    if bad is not None:
        raise ModelError(f"model file {path} is corrupt (checksum error in {bad}); download or train it again")


def _check_finite_weights(path: Path, state_dict: Any) -> None:
    """NaN or infinite weights give empty or garbage labels with no error: refuse them."""
    if not isinstance(state_dict, dict):
        return  # load_model reports a missing state_dict
    bad = [name for name, value in state_dict.items()
           if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        raise ModelError(
            f"model file {path} has non-finite (NaN or infinite) weights in {len(bad)} tensors (e.g. {bad[0]}); "
            "it cannot give meaningful labels: use another model or train it again"
        )


def _verify_sidecar(path: Path) -> None:
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return  # a bare .pt is allowed; the sidecar is a convenience, not a requirement
    try:
        sidecar_data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the model's sidecar {sidecar}: {exc}") from exc
    if not isinstance(sidecar_data, dict):
        raise ModelError(f"the model's sidecar {sidecar} is not a JSON object (it holds a {type(sidecar_data).__name__}); "
                         "delete it or write it again (it is optional)")
    expected = sidecar_data.get("sha256")
    if expected and expected != sha256_of_file(path):
        raise ModelError(f"checksum of {path} does not match {sidecar}: the file is corrupt or was changed; download or train it again")
