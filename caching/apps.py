from django.apps import AppConfig


class CachingConfig(AppConfig):
    name = "caching"

    def ready(self) -> None:
        # Retrieve steps search stored corpora: hook the retriever into the spec registry here,
        # so programs.spec stays free of database code.
        from programs.retrieval import retrieve
        from programs.spec import default_registry

        default_registry().retriever = retrieve
