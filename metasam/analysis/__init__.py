"""Comparisons against the baselines, report tables and plots, and explanations of a bias."""
