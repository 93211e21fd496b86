"""Caddie's bundled trainer: runs alone on a pod (or in one CPU process for tests).

It imports nothing from the rest of Caddie. What it shares with the worker — file
names, environment variables and log/JSON keys — is named once in `trainer.contract`,
which, like this file and `trainer.config`, never imports torch: those two are the trainer
modules the rest of Caddie may import (docs/architecture.md, tests/test_dependencies.py).
"""
