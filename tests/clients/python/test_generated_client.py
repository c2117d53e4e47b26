"""Drives a running keyplane through a client generated from openapi/openapi.json
by openapi-python-client, as an ops team would: register an instance, issue,
list, rotate and revoke a key, and read a problem+json error.

Run by tests/clients/python/run.sh, which generates the client and starts the
server; KEYPLANE_URL and KEYPLANE_TOKEN point at it.
"""

import os
import uuid

import pytest

from keyplane_client import AuthenticatedClient, Client
from keyplane_client.api.health import get_readiness
from keyplane_client.api.instances import create_instance, get_instance
from keyplane_client.api.keys import create_key, get_key, list_keys, revoke_key, rotate_key
from keyplane_client.models import (
    CreateInstanceRequest,
    CreateKeyRequest,
    CreatedKeyResponse,
    InstanceResponse,
    KeyPage,
    KeyResponse,
    KeyStatus,
    Problem,
    RevokeKeyRequest,
    RotateKeyRequest,
)

URL = os.environ["KEYPLANE_URL"]
TOKEN = os.environ["KEYPLANE_TOKEN"]


@pytest.fixture
def client():
    with AuthenticatedClient(base_url=URL, token=TOKEN) as client:
        yield client


def test_readiness_is_typed():
    with Client(base_url=URL) as anonymous:
        ready = get_readiness.sync(client=anonymous)
    assert ready.status == "ready"


def test_an_instance_and_its_key_through_their_whole_life(client):
    name = f"jan-{uuid.uuid4().hex[:8]}"
    instance = create_instance.sync(
        client=client,
        body=CreateInstanceRequest(name=name, allowed_scopes=["inference:chat", "models:read"]),
    )
    assert isinstance(instance, InstanceResponse), instance
    assert get_instance.sync(instance.id, client=client).name == name

    issued = create_key.sync(
        instance.id,
        client=client,
        body=CreateKeyRequest(name="laptop", scopes=["inference:chat"], expires_in=3600),
    )
    assert isinstance(issued, CreatedKeyResponse), issued
    assert issued.secret.startswith("kpi_")
    assert issued.masked_key.endswith(issued.secret[-4:])

    page = list_keys.sync(client=client, instance_id=instance.id)
    assert isinstance(page, KeyPage)
    assert [k.id for k in page.items] == [issued.id]
    assert not hasattr(page.items[0], "secret")

    successor = rotate_key.sync(issued.id, client=client, body=RotateKeyRequest(grace_seconds=60))
    assert isinstance(successor, CreatedKeyResponse), successor
    assert successor.rotated_from == issued.id
    old = get_key.sync(issued.id, client=client)
    assert isinstance(old, KeyResponse)
    assert old.status == KeyStatus.ROTATING

    revoked = revoke_key.sync(successor.id, client=client, body=RevokeKeyRequest(reason="test over"))
    assert isinstance(revoked, KeyResponse), revoked
    assert revoked.status == KeyStatus.REVOKED
    assert revoked.revoked_reason == "test over"


def test_errors_arrive_as_typed_problems(client):
    problem = create_instance.sync(client=client, body=CreateInstanceRequest(name=""))
    assert isinstance(problem, Problem), problem
    assert problem.status == 422
    assert problem.code == "invalid_field"
    assert problem.field == "name"
    assert problem.request_id

    with AuthenticatedClient(base_url=URL, token="kpa_wrong") as stranger:
        response = get_key.sync_detailed(uuid.uuid4(), client=stranger)
    assert response.status_code == 401
    assert isinstance(response.parsed, Problem)
    assert response.parsed.code == "invalid_credentials"
