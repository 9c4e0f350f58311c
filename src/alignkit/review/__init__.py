"""Human review of what the automated loop decided: items, labels, statistics, the review server."""
