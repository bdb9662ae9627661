from django.apps import AppConfig


class ProgramsConfig(AppConfig):
    name = "programs"

    def ready(self) -> None:
        # Retrieve steps search stored corpora: hook the retriever into the spec registry here,
        # so programs.spec stays free of database code (models are loaded only now).
        from programs.retrieval import retrieve
        from programs.spec import default_registry

        default_registry().retriever = retrieve
