"""Programs that run *inside* the sandbox (stdlib only, on the system Python); never imported."""
