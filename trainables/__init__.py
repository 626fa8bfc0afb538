"""Everything one trial needs: MNIST, the models and the training loop. Knows nothing of the search."""

__version__ = "0.1.0"
