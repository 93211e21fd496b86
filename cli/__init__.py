"""The `caddie` command: start the stack, run the demo, apply migrations."""
