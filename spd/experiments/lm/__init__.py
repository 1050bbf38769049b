"""Language-model decompositions: Hugging Face causal LMs and the offline example."""
