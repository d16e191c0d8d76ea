"""Deployment checks: Dockerfiles, docker-compose.yml, k8s/ and istio/ (see docs/deploy.md)."""
