"""URL routes: admin (operator console), REST API v1, OpenAPI, health and metrics."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from caching.api import cache_purge, cache_stats, program_cache_policy
from executions.api import BatchViewSet, ExecutionViewSet, SessionViewSet
from llm import admin as llm_admin
from llm.api import providers, routing
from monitoring import dashboards, health, scrape
from optimization.api import (
    DatasetViewSet,
    OptimizeView,
    ResultViewSet,
    RollbackView,
    RunViewSet,
    ScheduleViewSet,
)
from programs.api import ProgramViewSet
from programs.corpus_api import CorpusViewSet
from programs.openai_api import ChatCompletionsView, ModelsView
from projects.api import KeyViewSet, ProjectViewSet

router = DefaultRouter()
router.register("programs", ProgramViewSet, basename="program")
router.register("executions", ExecutionViewSet, basename="execution")
router.register("batches", BatchViewSet, basename="batch")
router.register("sessions", SessionViewSet, basename="session")
router.register("corpora", CorpusViewSet, basename="corpus")
router.register("datasets", DatasetViewSet, basename="dataset")
router.register("optimizations", RunViewSet, basename="optimization")
router.register("optimization-results", ResultViewSet, basename="optimization-result")
router.register("schedules", ScheduleViewSet, basename="schedule")
router.register("projects", ProjectViewSet, basename="project")
router.register("keys", KeyViewSet, basename="key")

urlpatterns = [
    path("admin/dashboards/", include(dashboards.urls())),
    path("admin/providers/", include(llm_admin.urls())),
    path("admin/", admin.site.urls),
    path("api/v1/cache/stats/", cache_stats, name="cache-stats"),
    path("api/v1/cache/<str:name>/purge/", cache_purge, name="cache-purge"),
    path("api/v1/cache/programs/<uuid:program_id>/", program_cache_policy, name="program-cache-policy"),
    path("api/v1/programs/<uuid:pk>/optimize/", OptimizeView.as_view(), name="program-optimize"),
    path("api/v1/programs/<uuid:pk>/rollback/", RollbackView.as_view(), name="program-rollback"),
    path("api/v1/providers/", providers, name="providers"),
    path("api/v1/providers/routing/", routing, name="providers-routing"),
    path("api/v1/", include(router.urls)),
    # OpenAI-compatible: the paths its clients append to a base URL of `.../v1`.
    path("v1/chat/completions", ChatCompletionsView.as_view(), name="openai-chat-completions"),
    path("v1/models", ModelsView.as_view(), name="openai-models"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("health/live", health.live, name="health-live"),
    path("health/ready", health.ready, name="health-ready"),
    path("metrics", scrape.metrics, name="metrics"),
]

# Unmatched URLs under /api/ answer the API's JSON error body, as the schema documents.
handler404 = "dspex_site.api.handler.not_found"
