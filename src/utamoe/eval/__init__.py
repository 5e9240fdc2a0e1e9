"""Evaluation: text metrics (`metrics`), GenEval-style image scoring (`geneval`) and the
per-task evaluation of a set of samples against predictions (`benchmark`)."""
