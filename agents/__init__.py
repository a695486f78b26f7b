"""Reference agents of sunsetd's profiles, one module per group of ../shared/AGENTS.md."""
