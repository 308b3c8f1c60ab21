"""Import TensorFlow quietly, CPU-only, never reaching for GCS, with thread pools that leave room for torch."""
from __future__ import annotations

import os


def quiet_tensorflow() -> None:
    """Set the environment before TensorFlow's first import (its C++ logging reads it once)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # the oneDNN banner ignores the log level
    os.environ.setdefault("NO_GCE_CHECK", "true")  # tfds/gfile: do not probe the GCE metadata server
    os.environ.setdefault("TFDS_DATA_DIR", os.devnull)


def import_tensorflow():
    quiet_tensorflow()
    import tensorflow as tf

    # tf.data feeds torch; it must neither take the GPU nor oversubscribe the cores torch computes on.
    try:
        tf.config.set_visible_devices([], "GPU")
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(2)
    except RuntimeError:  # already initialised in this process
        pass
    tf.get_logger().setLevel("ERROR")
    return tf
