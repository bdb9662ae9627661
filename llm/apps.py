from django.apps import AppConfig


class LlmConfig(AppConfig):
    name = "llm"
    verbose_name = "LLM gateway"

    def ready(self) -> None:
        from django.core import checks

        from llm import budgets, gateway, quotas, resilience, routing
        from monitoring import scrape

        checks.register(routing.check_settings, checks.Tags.compatibility)

        gateway.configure_dspy()
        # Breaker state and spend (from Redis) and key presence (from the key sources) are read
        # when Prometheus scrapes, so any process answers the same.
        from llm.providers import ProviderCollector

        for collector in (
            resilience.BreakerCollector(),
            budgets.BudgetCollector(),
            quotas.QuotaCollector(),
            ProviderCollector(),
        ):
            if not any(type(c) is type(collector) for c in scrape.EXTRA_COLLECTORS):
                scrape.EXTRA_COLLECTORS.append(collector)
