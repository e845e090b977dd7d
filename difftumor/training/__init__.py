"""Accelerate trainers for every stage (autoencoder, diffusion, segmentation) on top of :class:`.run.TrainingRun`."""
