"""AWS adapters: EventBridge Scheduler, task dispatch (Glue, Step Functions, SQS, Lambda), events out."""
