"""Caddie's worker: Celery steps that move runs through their lifecycle on pods.

Imports `server` (tables, leases, transitions) and the torch-free `trainer.contract`;
never the trainer itself, which runs alone on the pod.
"""
