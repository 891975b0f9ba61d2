"""Checkpoint file names and format version: light to import (the CLI and export need no torch model code).

A checkpoint directory (written by rank 0 of `raykd.train`) holds:
  checkpoint.pt  the latest full training state (model, optimizer, epoch, history, config)
  best.pt        the best-so-far student + projectors, its metrics, the config and layer map
"""

CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"
CHECKPOINT_FORMAT = 1
