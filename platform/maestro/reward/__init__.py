"""Motif reward model: caption encoder (`model.py`), Bradley-Terry training (`train.py`),
intrinsic reward (`intrinsic.py`), and the MLflow pyfunc wrapper MLflow loads it with
(`mlflow_model.py`)."""
