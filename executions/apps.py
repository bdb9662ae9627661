from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class ExecutionsConfig(AppConfig):
    name = "executions"

    def ready(self) -> None:
        # The per-process cache of runnable programs (executions.runner.runnable_program) forgets
        # a program as soon as this process changes it, its cache policy or any optimization result.
        from executions.housekeeping import StorageCollector
        from executions.runner import forget_program
        from monitoring import scrape

        # Database size and pruning lag, read when Prometheus scrapes (the growth runbook's alert).
        if not any(isinstance(c, StorageCollector) for c in scrape.EXTRA_COLLECTORS):
            scrape.EXTRA_COLLECTORS.append(StorageCollector())

        for sender in (
            "programs.CognitiveProgram",
            "caching.ProgramCachePolicy",
            "optimization.OptimizationResult",
        ):
            post_save.connect(forget_program, sender=sender, dispatch_uid=f"runnable-save-{sender}")
            post_delete.connect(forget_program, sender=sender, dispatch_uid=f"runnable-delete-{sender}")
