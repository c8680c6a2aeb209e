"""Evaluation tools: judges and sample statistics."""
