"""Caddie's server: SQL tables, the run state machine, eligibility rules and the HTTP API.

Imports neither `worker` nor `trainer`; it enqueues worker tasks by name.
"""
