"""Data for moejax: procedurally generated language suites, training streams, image sets.

Light modules (no TensorFlow): presets, records, words, memorization, reasoning, filler, suites
(examples, ``eval_items``, ``metadata``), scoring, tokenizer, layout, packing, stream (the
``suites`` and ``seqio`` training sources), sources, synthetic, images, image_readers
(TensorFlow only for ``tfds:`` sets), image_source.
TensorFlow modules (imported only to build or to read seqio): tfds_builders, seqio_tasks, build.
Build a preset with ``python -m experiments.build_data --preset=tiny --data_dir=DIR``.
"""
