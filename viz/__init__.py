"""Plotly figures for merge lab (no model code)."""
