"""The orchestrator: cohorts, tasks, deadlines and committed global versions, driving the round engine."""
