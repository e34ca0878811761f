"""The HTTP API (API Gateway REST proxy events), built on Powertools' resolver."""
