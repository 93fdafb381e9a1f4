"""The data floor: text in, ids out. Vocabularies, records (and their labels), corpora (built-in,
catalog, cache) and how ids are cut into minibatches. Needs numpy, not the model."""
