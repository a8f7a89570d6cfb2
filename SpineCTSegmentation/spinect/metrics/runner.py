"""The two ``spinect evaluate`` modes as backend functions (:func:`spinect.api.evaluate` calls them).

* files: ``pred`` and ``labels`` that already exist, paired by case id (:func:`match_case_files`);
* model on a dataset: each case of a dataset folder is segmented with :func:`spinect.api.segment`,
  in memory, then scored against its label (:func:`model_pairs`, lazily: one case in memory at a time).

Both end in :func:`run_evaluation` (score, then write the report files).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    from spinect.metrics.evaluation import EvaluationFiles, EvaluationResult

__all__ = ["run_evaluation", "model_pairs", "ModelPairs"]


def run_evaluation(
    pairs: Iterable[tuple[str, object, object]],
    out_dir: str | os.PathLike,
    *,
    class_names: Sequence[str],
    resample_prediction: bool = False,
    show_progress: bool = True,
) -> tuple[EvaluationResult, EvaluationFiles]:
    """Score already computed predictions and write the report (shared by every evaluate mode).

    Args:
        pairs: (case_id, prediction file or SimpleITK image, label file or SimpleITK image).
        out_dir: report folder.
        class_names: names of label values 0, 1, ...
        resample_prediction: resample off-grid predictions instead of failing.
        show_progress: show a tqdm bar on stderr.

    Returns:
        (EvaluationResult, EvaluationFiles).
    """
    from tqdm import tqdm

    from spinect.metrics.evaluation import evaluate_predictions, write_evaluation_report

    total = len(pairs) if hasattr(pairs, "__len__") else None  # type: ignore[arg-type]
    with tqdm(total=total, desc="evaluate", unit="case", disable=not show_progress) as bar:
        result = evaluate_predictions(
            pairs,
            class_names=tuple(class_names),
            resample_prediction=resample_prediction,
            progress=lambda done, _total, case_id: (bar.set_postfix_str(case_id), bar.update(1)),
        )
    files = write_evaluation_report(result, Path(out_dir))
    return result, files


class ModelPairs:
    """Lazily segments each dataset case with a model: yields (case_id, labels image, label path)."""

    def __init__(self, model: Path | None, cases, device: str) -> None:
        self._model, self._cases, self._device = model, cases, device

    def __len__(self) -> int:
        return len(self._cases)

    def __iter__(self):
        from spinect.api import segment

        for case in self._cases:
            result = segment(case.image, model=self._model, device=self._device)
            yield case.id, result.labels, case.label


def model_pairs(model: str | os.PathLike | None, data: str | os.PathLike, *, cases: Sequence[str] = (),
                device: str = "auto") -> ModelPairs:
    """The dataset's cases (all, or those named in ``cases``) to be segmented with ``model``
    (None = the shipped model) when iterated.

    Raises:
        InputError: a named case is not in the dataset; ModelError: no model.
    """
    from spinect.api import resolve_model_path
    from spinect.errors import InputError
    from spinect.manifest import discover_cases

    found = discover_cases(Path(data))
    if cases:
        by_id = {c.id: c for c in found}
        missing = [w for w in cases if w not in by_id]
        if missing:
            raise InputError(f"case ids {missing} are not in {data} (it has {sorted(by_id)[:10]}...)")
        found = [by_id[w] for w in cases]
    return ModelPairs(resolve_model_path(model), found, device)
