"""Residual-MLP toy models of compressed computation (docs/method.md, 'Experiments') as SPD targets."""
