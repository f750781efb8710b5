"""Around the method, not part of it: what growth costs (`planning`), which layers to grow (`selection`), how
many directions an update uses (`updates`), and whether fine-tuning disturbs in-context task representations
(`function_vectors`). Import the submodule you need; only `updates` is re-exported here."""

from .updates import UpdateRankRecorder, effective_rank, plot_rank_map, update_rank_callback, update_ranks

__all__ = ["UpdateRankRecorder", "effective_rank", "plot_rank_map", "update_rank_callback", "update_ranks"]
