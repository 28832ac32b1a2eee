"""Scaling-law fitting with honest uncertainty, and the study's figures.

The package reads tables (no models). Entry points:

  laws.get_law(name)                       chinchilla, clark, krajewski, ludziejewski, sparsity
  fitting.fit_law(law, inputs, loss)       Huber on log-loss, L-BFGS from a grid -> FitResult
  bootstrap.bootstrap_fit(fit, 1000)       percentile intervals -> BootstrapResult.summary()
  allocation.compute_optimal(fit, flops)   (N*, D*) for a FLOP budget, with intervals
  isoflop.isoflop_optima(df, ...)          a parabola per budget, optimum with interval
  extrapolation.holdout_extrapolation(...) fit on small runs, predict the largest
  figures.make_study_figures(df, out_dir)  the study's figures (PNG + PDF)
  results_schema                           the results table's columns; load_results(path)
  demo_data.make_demo_results()            a SYNTHETIC demo table
  li2025                                   loaders for the Li et al. 2025 public tables

Command lines: ``python -m analysis.fit --help`` (fit a table, one JSON line) and
``python -m analysis.coverage_study`` (interval coverage on synthetic data). Walkthrough:
notebooks/optimal_sparsity_walkthrough.ipynb.
"""
