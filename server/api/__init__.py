"""HTTP routers: one module per resource, one function per operation."""
