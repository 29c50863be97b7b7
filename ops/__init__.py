"""What an operator (or the pipeline) runs against a live stack: deliver, registry, smoke, train_wait,
ephemeral, local_up."""
