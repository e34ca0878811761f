"""Predicates of partial indexes that queries must repeat literally: PostgreSQL (under a generic
plan) and SQLite use a partial index only for a query whose WHERE implies the index's, which a state
passed as a parameter cannot. Plain strings, built from the core's states, so that the models and
both stores share them without importing each other."""

from __future__ import annotations

from controller.core.runs import FAILED

#: Failed runs whose key must run again (DESIGN §8): the sweep's search, and its index.
FAILED_RERUN = f"status = '{FAILED}' AND rerun_requested"
