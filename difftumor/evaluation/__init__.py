"""Segmentation evaluation: DSC, NSD, lesion detection by size, patient-level sensitivity and specificity."""

from .evaluate import evaluate_folders
from .metrics import SIZE_BINS, evaluate_case, markdown_table, match_lesions, summarize

__all__ = ["SIZE_BINS", "evaluate_case", "evaluate_folders", "markdown_table", "match_lesions", "summarize"]
