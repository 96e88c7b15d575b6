"""Tables and figures built from results alone."""
