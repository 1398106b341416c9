"""UNet training and evaluation: losses, metrics, train and evaluate loops."""
