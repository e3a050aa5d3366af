"""Measuring a model: detection/classification/pixel metrics, the HTML/text report and the
learning curve (what ``linesight eval`` and ``make bench`` print)."""
