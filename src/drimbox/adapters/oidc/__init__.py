"""OpenID Connect: the relying party that logs professionals in to the box
(``relying_party.py``, ``jwks.py``) and a development provider, ``drimbox idp``
(``provider.py``, ``provider_*.py``, ``people.py``), that plays Pro Santé Connect and the
patients' provider so demos and tests need nothing outside."""
