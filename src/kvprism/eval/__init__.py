"""Evaluation: long-context tasks generated offline, metrics, runner and reports."""
