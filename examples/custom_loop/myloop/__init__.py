"""A user's own training loop, written the way Ray Train's tutorial writes one."""
