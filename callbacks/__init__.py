"""Lightning callbacks: metrics (torchmetrics, DDP-synced) and writers."""
