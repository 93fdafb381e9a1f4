"""What a trained model answers: perplexity, generation (the one generation plan, constrained
forms), per-record scores, classification by label, completions, dynamic evaluation and per-character
surprise."""
