"""The online store (Redis in Feast's layout): the writer the streaming job and the models use, and the client
that reads a batch of entities back."""
