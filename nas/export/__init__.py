"""The winner made deployable: retrain, prune, quantize, export, measure (`nas export`)."""
