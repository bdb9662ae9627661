from django.apps import AppConfig


class ProgramsConfig(AppConfig):
    name = "programs"

    def ready(self) -> None:
        # Retrieve steps search stored corpora: hook the retriever into the spec registry here,
        # so programs.spec stays free of database code (models are loaded only now).
        from programs.retrieval import retrieve
        from programs.spec import default_registry

        default_registry().retriever = retrieve

        # Aliases and canaries are read per request from a per-process cache (programs.releases).
        from django.db.models.signals import post_delete, post_save

        from programs.releases import forget

        for sender in ("programs.ProgramAlias", "programs.Canary"):
            post_save.connect(forget, sender=sender, dispatch_uid=f"releases-save-{sender}")
            post_delete.connect(forget, sender=sender, dispatch_uid=f"releases-delete-{sender}")
