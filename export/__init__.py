"""Export: choose a subnet from a search, extract it and ship it (packed weights, runtime ONNX model, report).

It sits above `search/` and `predictors/` (it chooses from a front and measures), which sit above `supernet/`.
"""
