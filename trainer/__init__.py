"""A small but real stage-2 VLA trainer: RLDS/TFDS episodes -> tf.data adapter -> Lightning model.

It is the default probe of hlrp-ladder and accepts the real trainer's override keys
(``python -m trainer.train data.loader.batch_size=16 ...``).
"""
