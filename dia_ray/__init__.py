"""dia-ray: distributed benchmarking of DIA (Dissolving Is Amplifying) on Ray."""
__version__ = "0.1.0"
