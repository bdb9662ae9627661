from django.apps import AppConfig


class LlmConfig(AppConfig):
    name = "llm"
    verbose_name = "LLM gateway"

    def ready(self) -> None:
        from llm import gateway

        gateway.configure_dspy()
