"""The molecules domain: MOSES data, SMILES tokens, chemistry judges and metrics."""
