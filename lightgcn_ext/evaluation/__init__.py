"""Full-ranking evaluation of a recommender: recall, ndcg, precision and hit at k
(the LightGCN paper's definitions), and the popularity baseline to read them against.

    from lightgcn_ext.evaluation import ranking_metrics
    scores = ranking_metrics(user_emb, item_emb, test, exclude=[train], ks=(20,))
"""
from .metrics import (metric_sums, metrics_of_sums, popularity_baseline, ranking_metrics,
                      test_users)

__all__ = ["ranking_metrics", "metric_sums", "metrics_of_sums", "popularity_baseline",
           "test_users"]
