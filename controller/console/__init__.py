"""The web console of DESIGN §9: server-rendered pages over the same services and rules as the API."""
