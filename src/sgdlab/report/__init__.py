"""Scoring, tables, plots and the HTML report, from what the results store recorded."""
