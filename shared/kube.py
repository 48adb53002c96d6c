"""The one way netdiag connects to the Kubernetes API (the topology stage's live source, the TokenReviews
of the gateway and of `netdiag nats-auth`, `kubectl netdiag`): the official client, configured from a
kubeconfig when given, else the in-cluster service account (whose rotating token the client re-reads),
else ~/.kube/config."""

from __future__ import annotations

from pathlib import Path

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

# one connection per kind the live source watches at once (a dozen) plus its lists and the TokenReviews:
# urllib3's default pool (5 per CPU) would discard connections, with a warning each, on a 2-core node
POOL_SIZE = 32


def api_client(kubeconfig: Path | str | None = None) -> client.ApiClient:
    """A kubeconfig when given; else the in-cluster service account; else ~/.kube/config."""
    cfg = client.Configuration()
    cfg.connection_pool_maxsize = POOL_SIZE
    if kubeconfig:
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        return client.ApiClient(cfg)
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(client_configuration=cfg)
    return client.ApiClient(cfg)


class TokenReviewUnavailable(Exception):
    """A token could not be checked: the Kubernetes API is unreachable or refused the TokenReview."""


def review_token(api: client.ApiClient, token: str, audiences: list[str] | tuple[str, ...] = (),
                 timeout_s: tuple[float, float] = (3.0, 5.0)) -> client.V1TokenReviewStatus:
    """The API server's verdict on `token` (authentication.k8s.io/v1 TokenReview, nothing stored), for
    `audiences` (empty: the API server's own). Blocking (the sync official client): call it from a
    worker thread. Raises TokenReviewUnavailable — whose message never holds the token — when the API
    is unreachable or refuses the review (e.g. 403: the caller lacks system:auth-delegator)."""
    review = client.V1TokenReview(api_version="authentication.k8s.io/v1", kind="TokenReview",
                                  spec=client.V1TokenReviewSpec(token=token, audiences=list(audiences) or None))
    try:
        status = client.AuthenticationV1Api(api).create_token_review(review, _request_timeout=timeout_s).status
    except ApiException as exc:
        raise TokenReviewUnavailable(
            f"the Kubernetes API refused the TokenReview ({exc.status} {exc.reason})") from None
    except urllib3.exceptions.HTTPError as exc:
        raise TokenReviewUnavailable(f"the Kubernetes API is unreachable ({exc})") from None
    status = status or client.V1TokenReviewStatus()
    if audiences and status.authenticated and not set(status.audiences or ()) & set(audiences):
        # an authenticator that ignores audiences echoes none back: the token is not proven to be ours
        status.authenticated, status.error = False, f"the token is not for the audiences {list(audiences)}"
    return status
