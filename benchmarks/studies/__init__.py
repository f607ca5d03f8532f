"""Studies: what veriprint detects, what false alarms it raises, against which deployments,
servers and adversaries; each writes the measurement its page in docs/measurements/ reports."""
