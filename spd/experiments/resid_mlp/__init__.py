"""Residual-MLP toy models of compressed computation (spec §7) as SPD targets."""
