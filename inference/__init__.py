"""Inference: the models (fraud, recommendation, segmentation), their registry and the model API."""
