from __future__ import annotations

from django.apps import AppConfig


class FactoryConfig(AppConfig):
    name = "factory"
    verbose_name = "AI factory"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.core import checks
        from django.db.models.signals import post_delete, post_save

        from .adapters.local_guard import check_local_clusters
        from .api import authentication
        from .api.viewsets import check_api_scoping
        from .models import ApiToken

        checks.register(check_api_scoping, checks.Tags.security, checks.Tags.urls)
        checks.register(check_local_clusters, checks.Tags.security, deploy=True)

        post_delete.connect(authentication.forget_token, sender=ApiToken, dispatch_uid="factory.forget-token")
        user_model = get_user_model()
        post_save.connect(authentication.forget_user, sender=user_model, dispatch_uid="factory.forget-user-s")
        post_delete.connect(
            authentication.forget_user, sender=user_model, dispatch_uid="factory.forget-user-d"
        )
