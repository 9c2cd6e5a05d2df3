"""All Ray code of dia-ray: Train wrappers, the Data bank, Tune sweeps, the Jobs client."""
