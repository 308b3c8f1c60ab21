"""hlrp-ladder: find the largest batch size a training run survives in host RAM, before the long run."""

__version__ = "0.1.0"
