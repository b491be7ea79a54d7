"""GERBIL-faithful evaluation: dataset readers (AIDA TSV, NIF), id normalisation, the A2KB/D2KB scorer."""
