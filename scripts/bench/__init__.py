"""Side-by-side benchmark: frontgate vs stunnel + HAProxy on the same machine (`scripts/bench/run`)."""
