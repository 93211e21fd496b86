"""Templates and static assets of the web UI, served by the FastAPI app."""
