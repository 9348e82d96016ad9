"""Replay: reading history files, sorting them in event-time order, the simulation, the split
across processes and the HTML report."""
