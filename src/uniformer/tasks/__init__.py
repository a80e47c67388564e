"""Task definitions: what a model is trained to do (its network, loss and scores); the engine runs them."""
from uniformer.tasks import classification

__all__ = ["classification"]
