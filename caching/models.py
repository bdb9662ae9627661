"""The console's handle on the shared caches (their entries live in Redis, not here)."""

from django.db import models


class NamedCache(models.Model):
    """One shared cache (`llm`, `embeddings`, `optimizations`): what the admin lists with live
    stats and a purge action, and what a purge's audit event points at."""

    name = models.CharField(max_length=50, primary_key=True)
    description = models.CharField(max_length=255, blank=True)

    class Meta:
        db_table = "caches"
        ordering = ["name"]
        verbose_name = "cache"
        permissions = [("purge_namedcache", "Can purge a cache")]

    def __str__(self) -> str:
        return self.name


class ProgramCachePolicy(models.Model):
    """A program's choice about the LLM response cache. No row means the cache is used; with
    `llm_cache` off every execution of the program bypasses it (as `"cache": false` does for one
    execution). Lives here rather than in the spec: it is an operating decision, not part of
    what the program computes, and changing it must not make a new program version."""

    program = models.OneToOneField(
        "programs.CognitiveProgram", on_delete=models.CASCADE, primary_key=True, related_name="cache_policy"
    )
    llm_cache = models.BooleanField(default=True, help_text="Answer identical LM calls from the cache.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "program_cache_policies"
        verbose_name_plural = "program cache policies"

    def __str__(self) -> str:
        return f"{self.program_id}: llm cache {'on' if self.llm_cache else 'off'}"

    @classmethod
    def allows_llm_cache(cls, program_id: object) -> bool:
        return not cls.objects.filter(program_id=program_id, llm_cache=False).exists()
