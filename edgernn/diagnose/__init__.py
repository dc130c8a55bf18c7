"""Diagnosis of a parity failure: ``localize`` finds the first layer and time step where the exported model and
torch part, and plots the error over time. It runs after a check has failed, never on the export path."""
