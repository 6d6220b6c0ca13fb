"""The Optuna side: study registry, collapse pruning, worker processes, MLflow tracking, export.

The coordinator process (`python -m search.run`) never imports TensorFlow or Keras: each trial
trains in a spawned worker process, so no GPU or host memory leaks from one trial into the next
(optuna#1178, optuna#4934) and a crash costs one trial, not the study.
"""
