"""Training SPINECT networks: data loading and splits, patch sampling, augmentation, loss, loop."""

from spinect.train.augment import augment_patch, build_augmentation, region_size_for
from spinect.train.dataset import DataSplit, LoadedCase, load_case, load_cases, split_cases
from spinect.train.loss import WeightSchedule, weighted_cross_entropy
from spinect.train.sampling import PatchSample, PatchSampler
from spinect.train.trainer import PRECISIONS, TrainingConfig, TrainingResult, train, training_autocast_dtype, validate

__all__ = [
    "PRECISIONS",
    "TrainingConfig",
    "TrainingResult",
    "train",
    "training_autocast_dtype",
    "validate",
    "LoadedCase",
    "DataSplit",
    "load_case",
    "load_cases",
    "split_cases",
    "PatchSample",
    "PatchSampler",
    "build_augmentation",
    "augment_patch",
    "region_size_for",
    "WeightSchedule",
    "weighted_cross_entropy",
]
