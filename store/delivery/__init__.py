"""Progressive delivery: canary analysis and rollouts, degradation on SLO state (docs/slo.md)."""
