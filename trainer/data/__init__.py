"""Synthetic Open-X-style RLDS datasets in TFDS format, and the tf.data adapter that reads them."""
