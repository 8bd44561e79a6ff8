"""The training application behind train.py: config schema, data, metrics, logging, checkpoints, DDP."""
