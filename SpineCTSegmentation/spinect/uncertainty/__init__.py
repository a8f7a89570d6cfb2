"""Where the model is unsure: ensembles, flip TTA, entropy, VVC, review lists (3D-SepNet)."""

from spinect.uncertainty.ensemble import TTA_FLIPS_ZYX, EnsembleOutput, predict_ensemble
from spinect.uncertainty.measures import (
    fuse_probabilities,
    label_vote_entropy,
    predictive_entropy,
    sepnet_rank_weights,
    volume_variation_coefficient,
)
from spinect.uncertainty.review import ReviewRegion, uncertain_regions, write_review

__all__ = [
    "predict_ensemble", "EnsembleOutput", "TTA_FLIPS_ZYX", "label_vote_entropy", "predictive_entropy",
    "volume_variation_coefficient", "fuse_probabilities", "sepnet_rank_weights", "ReviewRegion",
    "uncertain_regions", "write_review",
]
