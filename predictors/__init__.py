"""Measurement of candidate subnets and the accuracy/latency predictors: see the predictors issue."""
