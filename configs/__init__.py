"""Experiment configs (YAML), shipped with the package so `unival train NAME` finds them when installed."""
