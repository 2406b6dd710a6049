"""Deployment: the local launcher, container image, compose and Kubernetes manifests."""
