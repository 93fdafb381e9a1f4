"""Looking inside a model: cells, gates, gradients through time (bptt), context use, state traces and
the text properties cells are held against."""
