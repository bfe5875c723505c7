"""VNN-LIB in and out: the verification community's property format, its competition's runner and
result files, and its standard solver command line.

* `reader.py` — VNN-LIB 1.0 and 2.0 files (plain or gzipped) → `uverify.verifier.property.Property`,
  parsed by the `vnnlib` package.
* `writer.py` — a `Property` → VNN-LIB 1.0 (what `uverify check --export-vnnlib` writes) or 2.0 (what
  `external.py` hands a solver).
* `external.py` — solvers that speak the VNN-LIB 2.0 command line (chapter 5) as a back end of `uverify check`.
* `network.py` — the ONNX network of an instance: imported, cross-checked by onnxruntime, sized
  against the property.
* `decide.py` — one instance's verdict: bounds, then PGD, then any later stage (branch and bound),
  every `sat` replayed by onnxruntime.
* `results.py` — VNN-COMP result files, instance and results CSVs, the score.
* `runner.py` — one instance or a benchmark folder under a wall-clock limit.
* `cli.py` — `uverify vnncomp`; `solver.py` — the `uverify-solver` console script (VNN-LIB 2.0, ch. 5).
"""
