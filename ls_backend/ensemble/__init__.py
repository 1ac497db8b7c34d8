"""The cost-aware cascading ensemble: answer strategies, bins, policy training (the paper's Algorithm 1) and
staged inference (Algorithm 2), the accuracy/cost frontier, bin-edge tuning and the Table 3 comparison.

The core takes numpy arrays: ``answers`` (L, n) class indices and ``scores`` (L, n) in [0, 1] (each LLM's
calibrated confidence in its answer), LLMs cheapest first. See docs/cascade.md.
"""

from ls_backend.ensemble.bins import decode_key, digitize, encode_keys, quantile_edges, uniform_edges
from ls_backend.ensemble.classification import precision_recall_f1
from ls_backend.ensemble.frontier import FrontierPoint, cost_frontier, train_within_budget
from ls_backend.ensemble.policy import (
    GO_DEEPER,
    NOT_REACHED,
    CascadePolicy,
    CascadeResult,
    train_policy,
)
from ls_backend.ensemble.strategies import (
    Strategy,
    default_strategies,
    get_strategy,
    majority_vote,
    most_confident,
    register_strategy,
    single_llm,
    weighted_majority_vote,
)
from ls_backend.ensemble.tuning import QuantileEdgeSpace, SplitEvaluator, TuningResult, tune_bin_edges

__all__ = [
    "GO_DEEPER",
    "NOT_REACHED",
    "CascadePolicy",
    "CascadeResult",
    "FrontierPoint",
    "QuantileEdgeSpace",
    "SplitEvaluator",
    "Strategy",
    "TuningResult",
    "cost_frontier",
    "decode_key",
    "default_strategies",
    "digitize",
    "encode_keys",
    "get_strategy",
    "majority_vote",
    "most_confident",
    "precision_recall_f1",
    "quantile_edges",
    "register_strategy",
    "single_llm",
    "train_policy",
    "train_within_budget",
    "tune_bin_edges",
    "uniform_edges",
    "weighted_majority_vote",
]
