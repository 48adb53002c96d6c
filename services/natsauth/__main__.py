"""`python -m services.natsauth [serve|keygen]` (also `netdiag nats-auth`): the NATS auth callout for
node agents (services/natsauth/handler.py)."""

from services.natsauth.service import main

if __name__ == "__main__":
    main()
