from django.apps import AppConfig


class LlmConfig(AppConfig):
    name = "llm"
    verbose_name = "LLM gateway"

    def ready(self) -> None:
        from django.core import checks

        from llm import budgets, gateway, resilience, routing
        from monitoring import scrape

        checks.register(routing.check_settings, checks.Tags.compatibility)

        gateway.configure_dspy()
        # Breaker state and spend are read from Redis when Prometheus scrapes (any process answers).
        for collector in (resilience.BreakerCollector(), budgets.BudgetCollector()):
            if not any(type(c) is type(collector) for c in scrape.EXTRA_COLLECTORS):
                scrape.EXTRA_COLLECTORS.append(collector)
