"""Sessions: multi-turn conversations with a program (executions.sessions)."""
