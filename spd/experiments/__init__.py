"""The registered experiments: their targets, training scripts, configs and decomposition scripts."""
