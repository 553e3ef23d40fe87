"""Evaluation: retrieval, zero-shot classification and the results records."""

from .retrieval import retrieval_recall

__all__ = ["retrieval_recall"]
