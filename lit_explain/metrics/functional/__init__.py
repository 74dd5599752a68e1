"""Functional twins of the metrics: plain tensor math, testable by hand."""
