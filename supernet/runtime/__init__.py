"""The deployment runtime: a subnet as an ONNX Runtime graph whose block linears run real low-bit kernels.

* `linears.py`  one block linear in ONNX, per kernel (float, integer matmuls, MatMulNBits)
* `graph.py`    the whole subnet's graph, built from the arch and its packed weights with the `onnx` helper API
* `kernels.py`  which kernel each linear gets: a table measured on this machine (fastest correct kernel)
* `session.py`  ONNX Runtime sessions, capability checks, what ORT actually runs
"""
