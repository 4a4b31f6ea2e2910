"""Cluster-fit simulations: what the charts would get from a real EKS cluster, computed offline."""
