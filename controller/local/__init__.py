"""``flux-control serve``: the Lambda on a laptop, with moto as AWS and local stand-ins for the scheduler
and for task completion. Nothing here runs in AWS."""
