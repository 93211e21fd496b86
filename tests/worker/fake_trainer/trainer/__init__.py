"""A stand-in trainer for the worker's tests: same command line and files as the real one."""
