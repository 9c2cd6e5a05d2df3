"""dia-ray's benchmarks: ``python -m benchmarks`` (issue 13's side-by-side speed ratios, ``benchmarks/results.json``)
and ``benchmarks/bank_vs_online.py`` (bank vs online dissolving: speed and AUROC). See benchmarks/README.md."""
