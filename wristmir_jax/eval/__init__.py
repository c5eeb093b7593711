"""Evaluation: Recall/Precision/mAP/nDCG@K with graded relevance, kNN fracture diagnosis F1 per
bone, AUROC/AUPRC, TREC run/qrels export, results tables, plots and retrieval panels."""
