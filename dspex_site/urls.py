"""URL routes: admin (operator console), REST API v1, OpenAPI, health and metrics."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from executions.api import ExecutionViewSet
from monitoring import health
from programs.api import ProgramViewSet

router = DefaultRouter()
router.register("programs", ProgramViewSet, basename="program")
router.register("executions", ExecutionViewSet, basename="execution")

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include(router.urls)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("health/live", health.live, name="health-live"),
    path("health/ready", health.ready, name="health-ready"),
    path("", include("django_prometheus.urls")),
]
