"""Built-in attack plugins; each module registers its attacks with ``register_attack``."""
