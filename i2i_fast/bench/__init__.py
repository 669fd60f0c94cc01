"""The benchmarks: the main job ``python -m i2i_fast.bench`` (cli), whole training steps
``python -m i2i_fast.bench.steps`` (steps) and the GPU memory-traffic model
``python -m i2i_fast.bench.gpu_model`` (gpu_model).

Modules, each importing only those listed before it:
  timing     defaults, measure() and its noise verdict, the machine-load report
  machine    copy bandwidth and the machine description of a result
  cases      the benchmarked ops (OPS) and Case: parity, eager/compile baselines, timings
  counting   ops (OpCounter) and kernel launches of a call; the CUDA emulation loader
  report     the main job's tables, legends and chart
  steps      the training steps of the six families, their timing and op counts
  gpu_model  the traffic model over the traced CUDA emulation
  cli        the main job
"""
