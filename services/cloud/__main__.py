"""`python -m services.cloud --nats URL` runs the cloud stage.

The provider comes from the environment: NETDIAG_CLOUD_PROVIDER (none | alibaba),
NETDIAG_CLOUD_REGION, NETDIAG_CLOUD_ENDPOINT (e.g. http://127.0.0.1:8089 for the emulator),
NETDIAG_CLOUD_CREDENTIALS_FILE or ALIBABA_CLOUD_ACCESS_KEY_ID/_SECRET.
"""

from __future__ import annotations

from services.cloud.handler import CloudStage
from shared.service import main as service_main


def main(argv: list[str] | None = None) -> None:
    service_main("cloud", CloudStage, argv)


if __name__ == "__main__":
    main()
