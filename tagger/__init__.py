"""tagger: genre probabilities for a local music library, from the audio itself."""

__version__ = "0.1.0"
