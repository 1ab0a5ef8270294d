"""The trainer: refits the mixture's MAP globals on recent points and publishes versioned models."""
