"""Account → API tokens: a user makes tokens (each shown once), sees them and revokes them; another
user's token is a 404."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from rest_framework.test import APIClient

from factory.models import ApiToken

pytestmark = pytest.mark.django_db

PAGE = "/account/tokens/"


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


def api_status(key: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client.get("/api/v1/tenants/").status_code


def test_the_page_needs_a_login(client):
    response = client.get(PAGE)
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_a_new_token_is_shown_once_and_works(owner_client, owner, settings):
    page = owner_client.get(PAGE).content.decode()
    assert '<label for="id_name">Name</label>' in page
    assert '<label for="id_days">Expires in (days)</label>' in page
    assert 'name="csrfmiddlewaretoken"' in page

    response = owner_client.post(PAGE, {"name": "laptop", "days": "30"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    key = re.search(
        r'id="new-token-value" type="text" readonly value="([0-9a-f]{64})"', response.content.decode()
    )[1]
    token = ApiToken.objects.get(user=owner)
    assert token.name == "laptop" and key.startswith(token.prefix)
    assert api_status(key) == 200
    assert key not in owner_client.get(PAGE).content.decode()  # never again


def test_the_list_shows_ones_own_tokens_only(owner_client, owner, outsider):
    ApiToken.issue(owner, name="ci")
    ApiToken.issue(outsider, name="someone-elses")
    page = owner_client.get(PAGE).content.decode()
    assert "ci" in page and "someone-elses" not in page


def test_a_bad_lifetime_is_refused_next_to_the_field(owner_client, settings):
    response = owner_client.post(PAGE, {"name": "x", "days": str(settings.FACTORY_TOKEN_MAX_DAYS + 1)})
    assert response.status_code == 400
    assert 'role="alert"' in response.content.decode()
    assert not ApiToken.objects.exists()


def test_revoking_a_token_stops_it_at_once(owner_client, owner):
    token, key = ApiToken.issue(owner, name="old laptop")
    assert api_status(key) == 200  # and now remembered by this process
    response = owner_client.post(f"{PAGE}{token.pk}/revoke/")
    assert response.status_code == 302 and response["Location"] == PAGE
    assert not ApiToken.objects.filter(pk=token.pk).exists()
    assert api_status(key) == 401
    assert "old laptop revoked" in owner_client.get(PAGE).content.decode()


def test_revoking_with_htmx_answers_the_table(owner_client, owner):
    keep, _ = ApiToken.issue(owner, name="keep")
    token, _ = ApiToken.issue(owner, name="drop")
    response = owner_client.post(f"{PAGE}{token.pk}/revoke/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<table class="jobs" id="tokens">')
    assert f'id="token-{keep.pk}"' in html and f'id="token-{token.pk}"' not in html
    assert "HX-Request" in response["Vary"]


def test_another_users_token_is_a_404(owner_client, outsider):
    theirs, key = ApiToken.issue(outsider)
    assert owner_client.post(f"{PAGE}{theirs.pk}/revoke/").status_code == 404
    assert ApiToken.objects.filter(pk=theirs.pk).exists() and api_status(key) == 200


def test_revoking_needs_a_post(owner_client, owner):
    token, _ = ApiToken.issue(owner)
    assert owner_client.get(f"{PAGE}{token.pk}/revoke/").status_code == 405
    assert ApiToken.objects.filter(pk=token.pk).exists()


def test_making_and_revoking_need_the_csrf_token(owner):
    token, _ = ApiToken.issue(owner)
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(owner)
    assert strict.post(PAGE, {"name": "x", "days": "1"}).status_code == 403
    assert strict.post(f"{PAGE}{token.pk}/revoke/").status_code == 403
    assert ApiToken.objects.filter(user=owner).count() == 1
