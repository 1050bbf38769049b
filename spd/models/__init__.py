"""The decomposed model: sigmoids, components, causal-importance functions, the wrapper."""
